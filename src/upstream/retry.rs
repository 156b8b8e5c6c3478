//! Retry policy (which failures, how often, how far apart) and the per-upstream retry budget
//! that keeps retries from multiplying the load on an upstream that is already failing.

use super::spec::MAX_TIMEOUT_MS;
use crate::config::{Diag, Located, Retries, RetryBudgetConfig};
use http::Method;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// More extra attempts than this multiply load on an already failing upstream (retry storms).
pub const MAX_RETRY_ATTEMPTS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Timeout,
    Status(u16),
}

impl RetryOn {
    pub fn parse(s: &str) -> Option<RetryOn> {
        match s {
            "connect_failure" => Some(RetryOn::ConnectFailure),
            "reset" => Some(RetryOn::Reset),
            "timeout" => Some(RetryOn::Timeout),
            code => code
                .parse::<u16>()
                .ok()
                .filter(|c| (400..=599).contains(c))
                .map(RetryOn::Status),
        }
    }
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect_failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Timeout => f.write_str("timeout"),
            RetryOn::Status(code) => write!(f, "{code}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub backoff: Duration,
    pub per_try_timeout: Option<Duration>,
    pub idempotency_key: bool,
    pub max_replay_bytes: u64,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl RetryPolicy {
    /// Builds a route's `retries`; `direct` says whether the route answers by itself.
    pub fn build(
        retries: &Located<Retries>,
        direct: bool,
        key: &str,
        diag: &mut Diag,
    ) -> Option<RetryPolicy> {
        let mark = diag.mark();
        if retries.attempts.value > MAX_RETRY_ATTEMPTS {
            diag.err(
                retries.attempts.line,
                format!("{key}.retries.attempts"),
                format!(
                    "{} extra attempts is above the maximum of {MAX_RETRY_ATTEMPTS}: each layer that \
                     retries multiplies the load on an upstream that is already failing (a retry storm)",
                    retries.attempts.value
                ),
            );
        }
        let mut on = Vec::with_capacity(retries.on.len());
        for cond in &retries.on {
            match RetryOn::parse(cond) {
                Some(c) => on.push(c),
                None => diag.err(
                    cond.line,
                    format!("{key}.retries.on"),
                    format!("`{}` is not a retry condition: use connect_failure, reset, timeout or a status code such as \"503\"", cond.value),
                ),
            }
        }
        if let Some(t) = &retries.per_try_timeout_ms {
            if t.value == 0 || t.value > MAX_TIMEOUT_MS {
                diag.err(
                    t.line,
                    format!("{key}.retries.per_try_timeout_ms"),
                    format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                );
            }
        }
        if retries.backoff_ms > 10_000 {
            diag.err(
                retries.line,
                format!("{key}.retries.backoff_ms"),
                "must be at most 10000",
            );
        }
        if retries.max_replay_bytes > 16 * 1024 * 1024 {
            diag.err(
                retries.line,
                format!("{key}.retries.max_replay_bytes"),
                "must be at most 16777216",
            );
        }
        if direct {
            diag.err(
                retries.line,
                format!("{key}.retries"),
                "a direct_response route has nothing to retry",
            );
        }
        diag.ok_since(
            mark,
            RetryPolicy {
                attempts: retries.attempts.value,
                on,
                backoff: Duration::from_millis(retries.backoff_ms),
                per_try_timeout: retries
                    .per_try_timeout_ms
                    .as_ref()
                    .map(|t| Duration::from_millis(t.value)),
                idempotency_key: retries.idempotency_key,
                max_replay_bytes: retries.max_replay_bytes,
            },
        )
    }

    /// Only idempotent methods are retried, unless the route opted in to `Idempotency-Key` and
    /// the request carries one.
    pub fn may_retry(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        self.attempts > 0
            && (is_idempotent(method)
                || (self.idempotency_key && headers.contains_key(IDEMPOTENCY_KEY)))
    }

    pub fn retries_on(&self, what: RetryOn) -> bool {
        self.on.contains(&what)
    }

    /// Jittered exponential backoff before retry number `n` (1-based): base × 2^(n-1) × [0.5, 1.5).
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.backoff.as_secs_f64() * f64::from(1u32 << (n.saturating_sub(1)).min(10));
        Duration::from_secs_f64(base * (0.5 + fastrand::f64()))
    }
}

/// Token bucket in thousandths of a retry: every request deposits `percent`% of a retry, every
/// retry withdraws a whole one, and `min_retries_per_second` trickles in with time. It starts
/// with `INITIAL` retries in hand (so the first failures of a quiet upstream can be retried) and
/// is capped so a quiet period cannot bank a retry storm.
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    last_refill_ms: AtomicU64,
}

const MILLI: i64 = 1000;
const CAP: i64 = 10 * MILLI;
const INITIAL: i64 = 3 * MILLI;

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            balance: AtomicI64::new(INITIAL),
            last_refill_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl RetryBudget {
    fn add(&self, amount: i64) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + amount).min(CAP))
            });
    }

    /// Called once per client request sent to the upstream.
    pub fn deposit(&self, cfg: &RetryBudgetConfig) {
        self.add(i64::from(cfg.percent) * MILLI / 100);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self, cfg: &RetryBudgetConfig) -> bool {
        let now = now_ms();
        let last = self.last_refill_ms.load(Ordering::Acquire);
        let elapsed = now.saturating_sub(last);
        if elapsed >= 100
            && self
                .last_refill_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.add(i64::from(cfg.min_retries_per_second) * MILLI * elapsed as i64 / 1000);
        }
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }
}

/// Methods that may be sent twice without a second effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_about_percent_of_requests() {
        let cfg = RetryBudgetConfig {
            percent: 20,
            min_retries_per_second: 0,
        };
        let b = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit(&cfg);
            if b.withdraw(&cfg) {
                granted += 1;
            }
        }
        assert_eq!(granted, 203, "20% of 1000 plus the 3 in hand");
    }

    #[test]
    fn conditions_parse() {
        assert_eq!(RetryOn::parse("503"), Some(RetryOn::Status(503)));
        assert_eq!(RetryOn::parse("reset"), Some(RetryOn::Reset));
        assert_eq!(RetryOn::parse("200"), None);
        assert_eq!(RetryOn::parse("sometimes"), None);
    }
}
