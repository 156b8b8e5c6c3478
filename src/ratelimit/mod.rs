//! Rate limiting: named limits compiled once (kept across reloads while their definition does
//! not change, so counters are never reset by a reload), then per request one decision per
//! limit the route applies. Limits stack; the first that refuses answers 429, and whatever the
//! limits before it took is given back.

pub mod algorithm;
pub mod batched;
pub mod calendar;
pub mod key;
pub mod local;
pub mod plan;
pub mod redis;

pub mod spec;

use crate::config::{RateMode, RateStore, StoreFailure};
use crate::redis_store::RedisStore;
use algorithm::{Algorithm, Outcome};
use http::{HeaderMap, HeaderName, HeaderValue};
use key::{KeyInput, KeySpec};
use local::LocalStore;
pub use spec::{LimitSpec, RateLimitSpecs};
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
        /// Quotas with a flush interval: counted here, added to Redis in batches.
        batched: Option<Arc<batched::Batched>>,
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
    definition: LimitSpec,
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
    Batched(&'l batched::Batched, String),
}

impl Limiter {
    fn new(def: &LimitSpec, redis: Option<&Arc<RedisStore>>) -> Limiter {
        let algorithm = def.algorithm;
        let backend = match (def.store, redis) {
            (RateStore::Redis, Some(store)) => Backend::Redis {
                prefix: format!("{}{}", store.key_prefix, def.name),
                store: Arc::clone(store),
                on_failure: def.on_store_failure,
                fallback: (def.on_store_failure == StoreFailure::LocalFallback)
                    .then(|| LocalStore::new(algorithm, def.max_keys)),
                batched: (def.flush_interval_ms > 0).then(|| {
                    Arc::new(batched::Batched::new(
                        Arc::clone(store),
                        def.flush_interval_ms,
                    ))
                }),
            },
            // A `redis` limit always has a store: the config cross-check requires the section.
            _ => Backend::Local(LocalStore::new(algorithm, def.max_keys)),
        };
        let (q, _) = algorithm.policy();
        Limiter {
            name: def.name.clone(),
            algorithm,
            key: KeySpec::new(def.key.clone()),
            mode: def.mode,
            backend,
            policy_value: def.policy_value.clone(),
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
                let outcome = store.decide(key, self.algorithm.now_us());
                Some((Verdict::Decided(outcome), Some(Taken::Local(store, key))))
            }
            Backend::Redis {
                store,
                prefix,
                on_failure,
                fallback,
                batched,
            } => {
                let key = self.key.redis(prefix, input)?;
                if let (Some(b), Algorithm::Quota { period, .. }) = (batched, &self.algorithm) {
                    let now = self.algorithm.now_us();
                    let window = period.window_at((now / 1_000_000) as i64);
                    let key = redis::quota_key(&key, &window);
                    let outcome = b.decide(&self.algorithm, key.clone(), window, now);
                    return Some((Verdict::Decided(outcome), Some(Taken::Batched(b, key))));
                }
                match redis::decide(store, &self.algorithm, &key).await {
                    Ok((outcome, key)) => {
                        Some((Verdict::Decided(outcome), Some(Taken::Redis(store, key))))
                    }
                    Err(_) => Some(match (on_failure, fallback) {
                        (StoreFailure::LocalFallback, Some(f)) => {
                            self.counters
                                .failure_fallback
                                .fetch_add(1, Ordering::Relaxed);
                            let k = self.key.local(input)?;
                            let outcome = f.decide(k, self.algorithm.now_us());
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
            Taken::Redis(store, key) => redis::refund(store, &self.algorithm, &key).await,
            Taken::Batched(b, key) => b.refund(&key),
        }
    }

    /// A quota's use in the current window for `consumer` (None: not a quota, or its key is
    /// not the consumer alone).
    pub async fn quota_usage(
        &self,
        consumer: &crate::consumer::Consumer,
    ) -> Option<Result<QuotaUsage, crate::redis_store::StoreError>> {
        let Algorithm::Quota { limit, period } = self.algorithm else {
            return None;
        };
        let window = period.window_at((self.algorithm.now_us() / 1_000_000) as i64);
        let empty = HeaderMap::new();
        let input = KeyInput {
            route: "",
            client_ip: "",
            headers: &empty,
            principal: None,
            consumer: Some(consumer),
            tenant: consumer.tenant.as_deref(),
        };
        let used = match &self.backend {
            Backend::Local(store) => {
                let key = self.key.local(&input)?;
                Ok(store.used_in(key, window.start_s.max(0) as u64))
            }
            Backend::Redis {
                store,
                prefix,
                batched,
                ..
            } => {
                let key = redis::quota_key(&self.key.redis(prefix, &input)?, &window);
                match batched.as_ref().and_then(|b| b.used(&key)) {
                    Some(n) => Ok(n),
                    None => redis::quota_used(store, &key).await,
                }
            }
        };
        Some(used.map(|used| QuotaUsage {
            limit,
            used,
            window,
            period,
        }))
    }
}

/// A quota's state for one consumer, for `/admin/consumers/<id>`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaUsage {
    pub limit: u64,
    pub used: u64,
    pub window: calendar::Window,
    pub period: calendar::Period,
}

/// The limits one route applies, in order (defaults first, then the route's own, then the
/// consumer's plan's when the route says `by_plan`).
#[derive(Clone, Default)]
pub struct RouteLimits {
    limiters: Vec<Arc<Limiter>>,
    plans: Option<Arc<plan::PlanTable>>,
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
        self.limiters.is_empty() && self.plans.is_none()
    }

    /// The plan table, on a `by_plan` route.
    pub fn plans(&self) -> Option<&plan::PlanTable> {
        self.plans.as_deref()
    }

    /// The plan whose limits apply to `consumer` on this route (`by_plan` routes only).
    pub fn plan_for(
        &self,
        consumer: Option<&crate::consumer::Consumer>,
    ) -> Option<&plan::LivePlan> {
        let plan = self
            .plans
            .as_ref()?
            .plan_for(consumer.and_then(|c| c.plan.as_deref()))?;
        plan.requests.fetch_add(1, Ordering::Relaxed);
        Some(plan)
    }

    /// Runs every limit, then `plan`'s; the first that refuses wins and the ones before it are
    /// given back.
    pub async fn check(
        &self,
        input: &KeyInput<'_>,
        plan: Option<&plan::LivePlan>,
        result: &mut RateResult,
    ) -> Result<RateHeaders, Refusal> {
        let mut headers = RateHeaders::default();
        let mut taken: Vec<(&Limiter, Taken<'_>)> = Vec::new();
        let by_plan: &[Arc<Limiter>] = plan.map_or(&[], |p| &p.limiters);
        let last = (self.limiters.len() + by_plan.len()).saturating_sub(1);
        for (i, limiter) in self.limiters.iter().chain(by_plan).enumerate() {
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
                    // The same number as the refusing limit's `t` and X-RateLimit-Reset.
                    refused.retry_after_s = Some(outcome.reset_s);
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

/// Limiters carried across reloads (while their definition and store do not change, so a
/// reload never resets a counter).
#[derive(Default)]
pub struct LimiterRegistry {
    limiters: HashMap<String, Arc<Limiter>>,
}

impl LimiterRegistry {
    /// The limiters for `specs`, in their order, reusing every limiter whose definition did
    /// not change (and, for Redis limits, whose store was not replaced).
    pub fn compile(
        &mut self,
        specs: &[LimitSpec],
        redis: Option<&Arc<RedisStore>>,
        redis_changed: bool,
    ) -> Vec<Arc<Limiter>> {
        let limiters: Vec<Arc<Limiter>> = specs
            .iter()
            .map(|def| {
                let keep = self.limiters.get(&def.name).filter(|l| {
                    l.definition == *def && !(redis_changed && def.store == RateStore::Redis)
                });
                match keep {
                    Some(l) => Arc::clone(l),
                    None => Arc::new(Limiter::new(def, redis)),
                }
            })
            .collect();
        self.limiters = limiters
            .iter()
            .map(|l| (l.name.clone(), Arc::clone(l)))
            .collect();
        limiters
    }
}

/// The limits for one route, by position: `defaults.rate_limits` then the route's own, and
/// the plans when the route applies them.
pub fn route_limits(
    all: &[Arc<Limiter>],
    defaults: &[usize],
    route: &[usize],
    plans: Option<&Arc<plan::PlanTable>>,
) -> RouteLimits {
    RouteLimits {
        limiters: defaults
            .iter()
            .chain(route)
            .map(|i| Arc::clone(&all[*i]))
            .collect(),
        plans: plans.cloned(),
    }
}

/// Every limiter in the snapshot by name, for `/metrics`.
pub fn by_name(all: &[Arc<Limiter>]) -> Vec<Arc<Limiter>> {
    let mut v = all.to_vec();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The rate-limit families for `/metrics`: decisions by limit and result, local keys, and the
/// shared store's state.
pub fn render_metrics(limiters: &[Arc<Limiter>], redis: Option<&RedisStore>, out: &mut String) {
    use crate::observe::metrics::{family, label};
    use std::sync::atomic::Ordering::Relaxed;
    if !limiters.is_empty() {
        let mut decisions = Vec::new();
        let mut keys = Vec::new();
        for l in limiters {
            let c = &l.counters;
            for (result, n) in [
                ("allowed", &c.allowed),
                ("limited", &c.limited),
                ("shadow_limited", &c.shadow_limited),
                ("store_failure_allowed", &c.failure_allowed),
                ("store_failure_denied", &c.failure_denied),
                ("store_failure_fallback", &c.failure_fallback),
            ] {
                decisions.push((
                    format!("{},{}", label("limit", &l.name), label("result", result)),
                    n.load(Relaxed) as f64,
                ));
            }
            keys.push((label("limit", &l.name), l.local_keys() as f64));
        }
        family(
            out,
            "portcullis_ratelimit_decisions_total",
            "counter",
            "Rate-limit decisions by limit and result (store_failure_*: Redis unusable, what happened instead).",
            &decisions,
        );
        family(
            out,
            "portcullis_ratelimit_local_keys",
            "gauge",
            "Keys held in this instance's memory by limit (local store or Redis fallback).",
            &keys,
        );
    }
    if let Some(redis) = redis {
        family(
            out,
            "portcullis_ratelimit_store_up",
            "gauge",
            "1 while Redis is used for rate limits, 0 while its breaker skips it.",
            &[(label("store", "redis"), f64::from(u8::from(redis.is_up())))],
        );
        family(
            out,
            "portcullis_ratelimit_store_errors_total",
            "counter",
            "Failed or timed-out Redis calls.",
            &[(label("store", "redis"), redis.errors.load(Relaxed) as f64)],
        );
    }
}
