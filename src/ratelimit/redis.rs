//! Limits shared by every gateway instance through one Redis server: one round trip per
//! decision (an atomic Lua script, EVALSHA with EVAL fallback), Redis's own clock (`TIME`) so
//! instances with skewed clocks agree, keys that expire by themselves. A short timeout and a
//! breaker keep an outage from adding latency to every request: while the breaker is open
//! Redis is not called at all, and one request probes it again after `breaker_open_ms`.

use super::algorithm::{Algorithm, Outcome};
use super::local::now_us;
use crate::config::RedisConfig;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// GCRA. KEYS[1]: the bucket. ARGV: interval µs, burst µs (capacity × interval).
/// Returns {allowed, stored TAT − now}.
const TOKEN_BUCKET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > burst then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return {1, nxt - now}
"#;

/// Weighted two-window counter. KEYS[1]: the counter hash. ARGV: limit, window µs.
/// Returns {allowed, current, previous, elapsed µs}.
const SLIDING_WINDOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local index = math.floor(now / w)
local s = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
local i, c, p = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
if i == nil then c, p = 0, 0
elseif i == index - 1 then p = c; c = 0
elseif i ~= index then c, p = 0, 0 end
local elapsed = now - index * w
local allowed = 0
if (c + 1) * w + p * (w - elapsed) <= limit * w then
  allowed = 1
  c = c + 1
  redis.call('HSET', KEYS[1], 'i', string.format('%d', index), 'c', c, 'p', p)
  redis.call('PEXPIRE', KEYS[1], math.ceil((2 * w - elapsed) / 1000) + 1)
end
return {allowed, c, p, elapsed}
"#;

/// Gives one request back. KEYS[1]: the key. ARGV: algorithm (tb | sw), interval µs.
const REFUND: &str = r#"
if ARGV[1] == 'tb' then
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat then
    redis.call('SET', KEYS[1], string.format('%d', tat - tonumber(ARGV[2])), 'KEEPTTL')
  end
else
  local c = tonumber(redis.call('HGET', KEYS[1], 'c'))
  if c and c > 0 then redis.call('HSET', KEYS[1], 'c', c - 1) end
end
return 1
"#;

/// KEYS[1]: a key. Returns {1} when it exists.
const EXISTS: &str = "return {redis.call('EXISTS', KEYS[1])}";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis breaker open")]
    BreakerOpen,
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One Redis server's connection, breaker and scripts; shared by every limit using it and kept
/// across reloads while `redis` does not change.
pub struct RedisStore {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    pub key_prefix: String,
    timeout: Duration,
    breaker: Breaker,
    token_bucket: Script,
    sliding_window: Script,
    refund: Script,
    exists: Script,
    pub errors: AtomicU64,
}

/// Consecutive failures open it; while open, calls fail at once; after the open period one
/// call (the probe) goes through, and its success closes it.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    threshold: u32,
    open_for_us: u64,
    /// 0 when closed; else when the next probe may go.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    /// Whether a call may go to Redis now (true for the probe, which must then report back).
    fn admit(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        now >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis is reachable again; rate limits use it");
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Returns true when this failure opened (or re-opened) the breaker.
    fn failure(&self, now: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= self.threshold || was_probe {
            let before = self
                .open_until
                .swap(now + self.open_for_us, Ordering::AcqRel);
            return before == 0;
        }
        false
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// Whether `url` is a Redis URL the client accepts (nothing is contacted).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("invalid redis url: {e}"))
}

impl RedisStore {
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let client = redis::Client::open(&*config.url.value.0)
            .map_err(|e| format!("invalid redis url: {e}"))?;
        Ok(RedisStore {
            client,
            conn: ArcSwapOption::empty(),
            key_prefix: config.key_prefix.to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
            breaker: Breaker {
                threshold: config.breaker_failures.max(1),
                open_for_us: config.breaker_open_ms * 1000,
                ..Breaker::default()
            },
            token_bucket: Script::new(TOKEN_BUCKET),
            sliding_window: Script::new(SLIDING_WINDOW),
            refund: Script::new(REFUND),
            exists: Script::new(EXISTS),
            errors: AtomicU64::new(0),
        })
    }

    pub fn is_up(&self) -> bool {
        !self.breaker.is_open()
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        // Lazy: it connects on its first command (inside our timeout), and reconnects by
        // itself after a connection is lost.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // No retry loop inside a request: the breaker decides when to try again.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        self.conn.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }

    /// Runs one script invocation under the breaker and the timeout.
    async fn call(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, StoreError> {
        let now = now_us();
        if !self.breaker.admit(now) {
            return Err(StoreError::BreakerOpen);
        }
        let result = match self.connection() {
            Ok(mut conn) => {
                match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(StoreError::Redis(e)),
                    Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
                }
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if self.breaker.failure(now_us()) {
                    tracing::warn!(error = %e, "redis unavailable; rate limits use their on_store_failure mode until it is back");
                    // Start over with a fresh connection on the next probe.
                    self.conn.store(None);
                }
            }
        }
        result
    }

    /// Decides one request for `key`.
    pub async fn decide(&self, algorithm: &Algorithm, key: &str) -> Result<Outcome, StoreError> {
        match *algorithm {
            Algorithm::TokenBucket {
                capacity,
                interval_us,
            } => {
                let mut inv = self.token_bucket.key(key);
                inv.arg(interval_us).arg(capacity * interval_us);
                let v = self.call(inv).await?;
                let (allowed, ahead) = (v.first() == Some(&1), *v.get(1).unwrap_or(&0));
                Ok(algorithm.gcra_outcome(allowed, ahead.max(0) as u64))
            }
            Algorithm::SlidingWindow { limit, window_us } => {
                let mut inv = self.sliding_window.key(key);
                inv.arg(limit).arg(window_us);
                let v = self.call(inv).await?;
                let get = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
                Ok(algorithm.window_outcome(get(0) == 1, get(1), get(2), get(3)))
            }
        }
    }

    /// Whether `key` exists (under the same timeout and breaker as limits).
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let v = self.call(self.exists.key(key)).await?;
        Ok(v.first() == Some(&1))
    }

    /// Gives one request back (a later limit refused it). Best effort.
    pub async fn refund(&self, algorithm: &Algorithm, key: &str) {
        let mut inv = self.refund.key(key);
        match *algorithm {
            Algorithm::TokenBucket { interval_us, .. } => inv.arg("tb").arg(interval_us),
            Algorithm::SlidingWindow { .. } => inv.arg("sw").arg(0),
        };
        let _ = self.call(inv).await;
    }
}
