//! Rate limiting: named limits compiled once (kept across reloads while their definition does
//! not change, so counters are never reset by a reload), then per request one decision per
//! limit the route applies. Limits stack; the first that refuses answers 429, and whatever the
//! limits before it took is given back.

pub mod algorithm;
pub mod key;
pub mod local;
pub mod redis;

use crate::config::{Config, RateLimit, RateMode, RateStore, RedisConfig, StoreFailure};
use algorithm::{Algorithm, Outcome};
use http::{HeaderMap, HeaderName, HeaderValue};
use key::{KeyInput, KeyPart, KeySpec};
use local::LocalStore;
use redis::RedisStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Decisions by result, for `/metrics`.
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    pub shadow_limited: AtomicU64,
    /// Redis unusable, by what happened instead.
    pub failure_allowed: AtomicU64,
    pub failure_denied: AtomicU64,
    pub failure_fallback: AtomicU64,
}

enum Backend {
    Local(LocalStore),
    Redis {
        store: Arc<RedisStore>,
        /// `key_prefix` + limit name.
        prefix: String,
        on_failure: StoreFailure,
        /// Per-instance limits while Redis cannot be used (`local_fallback`).
        fallback: Option<LocalStore>,
    },
}

/// One named limit, compiled.
pub struct Limiter {
    pub name: String,
    pub algorithm: Algorithm,
    key: KeySpec,
    pub mode: RateMode,
    backend: Backend,
    /// This limit's `RateLimit-Policy` item, e.g. `"per-tenant";q=100;w=60`.
    policy_value: HeaderValue,
    /// Its quota, for `X-RateLimit-Limit`.
    limit_value: HeaderValue,
    pub counters: LimitCounters,
    definition: RateLimit,
}

/// What one limit said about one request.
enum Verdict {
    Decided(Outcome),
    /// The store could not be used and `on_store_failure` is `allow`.
    FailedOpen,
    /// The store could not be used and `on_store_failure` is `deny`.
    FailedClosed,
}

/// The bucket a request used, to give back.
enum Taken<'l> {
    Local(&'l LocalStore, u64),
    Redis(&'l RedisStore, String),
}

impl Limiter {
    fn compile(def: &RateLimit, redis: Option<&Arc<RedisStore>>) -> Limiter {
        let algorithm = Algorithm::compile(def);
        let backend = match (def.store, redis) {
            (RateStore::Redis, Some(store)) => Backend::Redis {
                prefix: format!("{}{}", store.key_prefix, def.name.value),
                store: Arc::clone(store),
                on_failure: def.on_store_failure,
                fallback: (def.on_store_failure == StoreFailure::LocalFallback)
                    .then(|| LocalStore::new(algorithm, def.max_keys)),
            },
            // Validation requires `redis` for a redis limit.
            _ => Backend::Local(LocalStore::new(algorithm, def.max_keys)),
        };
        let (q, w) = algorithm.policy();
        Limiter {
            name: def.name.value.to_string(),
            algorithm,
            key: KeySpec::new(
                def.key
                    .iter()
                    .map(|k| KeyPart::parse(k).expect("validated key part"))
                    .collect(),
            ),
            mode: def.mode,
            backend,
            policy_value: HeaderValue::from_str(&format!("\"{}\";q={q};w={w}", def.name.value))
                .expect("kebab-case names make valid header values"),
            limit_value: HeaderValue::from(q),
            counters: LimitCounters::default(),
            definition: def.clone(),
        }
    }

    pub fn local_keys(&self) -> usize {
        match &self.backend {
            Backend::Local(s) => s.len(),
            Backend::Redis { fallback, .. } => fallback.as_ref().map_or(0, |f| f.len()),
        }
    }

    async fn decide<'l>(&'l self, input: &KeyInput<'_>) -> Option<(Verdict, Option<Taken<'l>>)> {
        match &self.backend {
            Backend::Local(store) => {
                let key = self.key.local(input)?;
                let outcome = store.decide(key, local::now_us());
                Some((Verdict::Decided(outcome), Some(Taken::Local(store, key))))
            }
            Backend::Redis {
                store,
                prefix,
                on_failure,
                fallback,
            } => {
                let key = self.key.redis(prefix, input)?;
                match store.decide(&self.algorithm, &key).await {
                    Ok(outcome) => {
                        Some((Verdict::Decided(outcome), Some(Taken::Redis(store, key))))
                    }
                    Err(_) => Some(match (on_failure, fallback) {
                        (StoreFailure::LocalFallback, Some(f)) => {
                            self.counters
                                .failure_fallback
                                .fetch_add(1, Ordering::Relaxed);
                            let k = self.key.local(input)?;
                            let outcome = f.decide(k, local::now_us());
                            (Verdict::Decided(outcome), Some(Taken::Local(f, k)))
                        }
                        (StoreFailure::Deny, _) => {
                            self.counters.failure_denied.fetch_add(1, Ordering::Relaxed);
                            (Verdict::FailedClosed, None)
                        }
                        _ => {
                            self.counters
                                .failure_allowed
                                .fetch_add(1, Ordering::Relaxed);
                            (Verdict::FailedOpen, None)
                        }
                    }),
                }
            }
        }
    }

    async fn give_back(&self, taken: Taken<'_>) {
        match taken {
            Taken::Local(store, key) => store.refund(key),
            Taken::Redis(store, key) => store.refund(&self.algorithm, &key).await,
        }
    }
}

/// The limits one route applies, in order (defaults first).
#[derive(Clone, Default)]
pub struct RouteLimits {
    limiters: Vec<Arc<Limiter>>,
}

/// What the limits said, rendered into response headers only at the end. Holds the limits that
/// applied (enforced ones only) and their outcomes; nothing is formatted or allocated for a
/// route whose single limit is the common case beyond two small numbers.
#[derive(Default)]
pub struct RateHeaders {
    applied: Vec<(Arc<Limiter>, Outcome)>,
    /// Index into `applied` of the limit reported in `X-RateLimit-*` (lowest remaining, or the
    /// refusing one).
    report: usize,
    retry_after_s: Option<u64>,
}

impl std::fmt::Debug for RateHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateHeaders")
            .field("limits", &self.applied.len())
            .finish()
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn number(n: u64) -> HeaderValue {
    let mut v = Vec::with_capacity(20);
    crate::observe::access_log::push_u64(&mut v, n);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).expect("digits are a valid header value")
}

impl RateHeaders {
    fn add(&mut self, limiter: &Arc<Limiter>, outcome: Outcome, report: bool) {
        let lower = self
            .applied
            .get(self.report)
            .is_none_or(|(_, o)| outcome.remaining < o.remaining);
        if report || lower {
            self.report = self.applied.len();
        }
        self.applied.push((Arc::clone(limiter), outcome));
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some((reported, outcome)) = self.applied.get(self.report) else {
            return;
        };
        headers.reserve(6);
        // Policies are fixed per limit: precomputed; joined only when several apply.
        let policy = match self.applied.as_slice() {
            [(only, _)] => only.policy_value.clone(),
            all => {
                let mut v = Vec::with_capacity(all.len() * 32);
                for (i, (l, _)) in all.iter().enumerate() {
                    if i > 0 {
                        v.extend_from_slice(b", ");
                    }
                    v.extend_from_slice(l.policy_value.as_bytes());
                }
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
                    .expect("policy items are valid header values")
            }
        };
        let mut state = Vec::with_capacity(self.applied.len() * 32);
        for (i, (l, o)) in self.applied.iter().enumerate() {
            if i > 0 {
                state.extend_from_slice(b", ");
            }
            state.push(b'"');
            state.extend_from_slice(l.name.as_bytes());
            state.extend_from_slice(b"\";r=");
            crate::observe::access_log::push_u64(&mut state, o.remaining);
            state.extend_from_slice(b";t=");
            crate::observe::access_log::push_u64(&mut state, o.reset_s);
        }
        headers.insert(RATELIMIT_POLICY, policy);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
            headers.insert(RATELIMIT, v);
        }
        headers.insert(X_LIMIT, reported.limit_value.clone());
        headers.insert(X_REMAINING, number(outcome.remaining));
        headers.insert(X_RESET, number(outcome.reset_s));
        if let Some(s) = self.retry_after_s {
            headers.insert(http::header::RETRY_AFTER, number(s));
        }
    }
}

/// A request the limits refused.
#[derive(Debug)]
pub enum Refusal {
    /// 429, with the headers saying which limit and when to retry.
    Limited { limit: String, headers: RateHeaders },
    /// 503: a Redis limit with `on_store_failure: deny` could not reach Redis.
    StoreUnavailable { limit: String },
}

/// How the request fared, for the access log and the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateResult {
    /// No limit applied.
    #[default]
    None,
    Allowed,
    Limited,
    /// A shadow limit would have refused it.
    ShadowLimited,
    StoreUnavailable,
}

impl RateResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RateResult::None => "none",
            RateResult::Allowed => "allowed",
            RateResult::Limited => "limited",
            RateResult::ShadowLimited => "shadow_limited",
            RateResult::StoreUnavailable => "store_unavailable",
        }
    }
}

impl RouteLimits {
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    /// Runs every limit; the first that refuses wins and the ones before it are given back.
    pub async fn check(
        &self,
        input: &KeyInput<'_>,
        result: &mut RateResult,
    ) -> Result<RateHeaders, Refusal> {
        let mut headers = RateHeaders::default();
        let mut taken: Vec<(&Limiter, Taken<'_>)> = Vec::new();
        let last = self.limiters.len().saturating_sub(1);
        for (i, limiter) in self.limiters.iter().enumerate() {
            let Some((verdict, took)) = limiter.decide(input).await else {
                continue; // the key needs a principal this request does not have
            };
            if *result == RateResult::None {
                *result = RateResult::Allowed;
            }
            let shadow = limiter.mode == RateMode::Shadow;
            match verdict {
                Verdict::Decided(outcome) if outcome.allowed => {
                    limiter.counters.allowed.fetch_add(1, Ordering::Relaxed);
                    // Only a later limit's refusal gives back: nothing to keep after the last.
                    if let (Some(t), true) = (took, i < last) {
                        taken.push((limiter, t));
                    }
                    if !shadow {
                        headers.add(limiter, outcome, false);
                    }
                }
                Verdict::Decided(_) if shadow => {
                    limiter
                        .counters
                        .shadow_limited
                        .fetch_add(1, Ordering::Relaxed);
                    *result = RateResult::ShadowLimited;
                }
                Verdict::Decided(outcome) => {
                    limiter.counters.limited.fetch_add(1, Ordering::Relaxed);
                    *result = RateResult::Limited;
                    for (l, t) in taken {
                        l.give_back(t).await;
                    }
                    let mut refused = RateHeaders::default();
                    refused.add(limiter, outcome, true);
                    refused.retry_after_s = Some(outcome.retry_after_s.max(1));
                    return Err(Refusal::Limited {
                        limit: limiter.name.clone(),
                        headers: refused,
                    });
                }
                Verdict::FailedOpen => {}
                Verdict::FailedClosed if shadow => {}
                Verdict::FailedClosed => {
                    *result = RateResult::StoreUnavailable;
                    for (l, t) in taken {
                        l.give_back(t).await;
                    }
                    return Err(Refusal::StoreUnavailable {
                        limit: limiter.name.clone(),
                    });
                }
            }
        }
        Ok(headers)
    }
}

/// Limiters and the Redis connection, carried across reloads.
#[derive(Default)]
pub struct LimiterRegistry {
    limiters: HashMap<String, Arc<Limiter>>,
    redis: Option<(RedisConfig, Arc<RedisStore>)>,
    redis_changed: bool,
}

impl LimiterRegistry {
    /// Compiles the config's limits, reusing every limiter whose definition (and Redis
    /// settings) did not change, and returns them by name.
    /// Whether the last `compile` replaced the Redis store.
    pub fn redis_changed(&self) -> bool {
        self.redis_changed
    }

    pub fn compile(&mut self, cfg: &Config) -> HashMap<String, Arc<Limiter>> {
        let redis_cfg = cfg.redis.as_ref().map(|r| &r.value);
        let redis_changed = match (&self.redis, redis_cfg) {
            (Some((old, _)), Some(new)) => old != new,
            (None, None) => false,
            _ => true,
        };
        self.redis_changed = redis_changed;
        if redis_changed {
            self.redis = redis_cfg.and_then(|c| match RedisStore::new(c) {
                Ok(s) => Some((c.clone(), Arc::new(s))),
                Err(e) => {
                    // Validation opened the same URL already; this cannot fail.
                    tracing::error!(error = %e, "redis store");
                    None
                }
            });
        }
        let redis = self.redis.as_ref().map(|(_, s)| s);
        let mut next = HashMap::new();
        for def in &cfg.rate_limits {
            let name = def.name.value.to_string();
            let keep = self.limiters.get(&name).filter(|l| {
                l.definition == def.value && !(redis_changed && def.store == RateStore::Redis)
            });
            let limiter = match keep {
                Some(l) => Arc::clone(l),
                None => Arc::new(Limiter::compile(def, redis)),
            };
            next.insert(name, limiter);
        }
        self.limiters = next.clone();
        next
    }

    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        self.redis.as_ref().map(|(_, s)| s)
    }
}

/// The limits for one route: `defaults.rate_limits` then the route's own.
pub fn route_limits(
    by_name: &HashMap<String, Arc<Limiter>>,
    defaults: &[crate::config::Located<crate::config::Text>],
    route: &[crate::config::Located<crate::config::Text>],
) -> RouteLimits {
    RouteLimits {
        limiters: defaults
            .iter()
            .chain(route)
            .filter_map(|n| by_name.get(&*n.value.0).cloned())
            .collect(),
    }
}

/// Every limiter in the snapshot, for `/metrics`.
pub fn all(by_name: &HashMap<String, Arc<Limiter>>) -> Vec<Arc<Limiter>> {
    let mut v: Vec<Arc<Limiter>> = by_name.values().cloned().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
