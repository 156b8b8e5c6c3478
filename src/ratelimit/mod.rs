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
    policy_item: String,
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
            policy_item: format!("\"{}\";q={q};w={w}", def.name.value),
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

/// What the limits said: headers for the response, or a refusal.
#[derive(Debug, Default)]
pub struct RateHeaders {
    policy: Vec<u8>,
    state: Vec<u8>,
    /// The most restrictive limit's figures (or the refusing one's): limit, remaining, reset.
    x: Option<(u64, u64, u64)>,
    retry_after_s: Option<u64>,
}

impl RateHeaders {
    fn add(&mut self, limiter: &Limiter, outcome: &Outcome, report: bool) {
        if !self.policy.is_empty() {
            self.policy.extend_from_slice(b", ");
            self.state.extend_from_slice(b", ");
        }
        self.policy
            .extend_from_slice(limiter.policy_item.as_bytes());
        use std::io::Write;
        let _ = write!(
            self.state,
            "\"{}\";r={};t={}",
            limiter.name, outcome.remaining, outcome.reset_s
        );
        let (q, _) = limiter.algorithm.policy();
        if report || self.x.is_none_or(|(_, r, _)| outcome.remaining < r) {
            self.x = Some((q, outcome.remaining, outcome.reset_s));
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some((limit, remaining, reset)) = self.x else {
            return;
        };
        if let Ok(v) = HeaderValue::from_bytes(&self.policy) {
            headers.insert(HeaderName::from_static("ratelimit-policy"), v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&self.state) {
            headers.insert(HeaderName::from_static("ratelimit"), v);
        }
        headers.insert(HeaderName::from_static("x-ratelimit-limit"), limit.into());
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            remaining.into(),
        );
        headers.insert(HeaderName::from_static("x-ratelimit-reset"), reset.into());
        if let Some(s) = self.retry_after_s {
            headers.insert(http::header::RETRY_AFTER, s.into());
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
        for limiter in &self.limiters {
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
                    if let Some(t) = took {
                        taken.push((limiter, t));
                    }
                    if !shadow {
                        headers.add(limiter, &outcome, false);
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
                    refused.add(limiter, &outcome, true);
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
}

impl LimiterRegistry {
    /// Compiles the config's limits, reusing every limiter whose definition (and Redis
    /// settings) did not change, and returns them by name.
    pub fn compile(&mut self, cfg: &Config) -> HashMap<String, Arc<Limiter>> {
        let redis_cfg = cfg.redis.as_ref().map(|r| &r.value);
        let redis_changed = match (&self.redis, redis_cfg) {
            (Some((old, _)), Some(new)) => old != new,
            (None, None) => false,
            _ => true,
        };
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
