//! Limits shared by every gateway instance through the shared Redis server: one round trip per
//! decision (an atomic Lua script, EVALSHA with EVAL fallback), Redis's own clock (`TIME`) so
//! instances with skewed clocks agree, keys that expire by themselves. The connection, timeout
//! and breaker are the shared store's (`crate::redis_store`).

use super::algorithm::{Algorithm, Outcome};
use super::calendar::Window;
use crate::redis_store::{RedisStore, StoreError};
use redis::Script;
use std::sync::LazyLock;

/// Where a script reads the time: Redis's own clock, so every instance decides on one clock.
pub const REDIS_CLOCK: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])";

/// For tests only: the time is the script's last argument (µs), so the scripts can be run at
/// chosen instants and compared decision by decision with the Rust arithmetic.
pub const ARGUMENT_CLOCK: &str = "local now = tonumber(ARGV[#ARGV])";

/// GCRA. KEYS[1]: the bucket. ARGV: interval µs, burst µs (capacity × interval).
/// Returns {allowed, stored TAT − now}.
const TOKEN_BUCKET: &str = r#"
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

/// A calendar quota. KEYS[1]: the window's counter (its start is part of the key). ARGV:
/// limit, the Unix second at which the counter may be dropped. Returns {allowed, used}.
const QUOTA: &str = r#"
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= limit then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return {1, used}
"#;

/// Adds a batch counted locally. KEYS[1]: the window's counter. ARGV: count, expiry (Unix s).
/// Returns the window's total.
const QUOTA_ADD: &str = r#"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {used}
"#;

/// Gives one request back. KEYS[1]: the key. ARGV: algorithm (tb | sw | q), interval µs.
const REFUND: &str = r#"
if ARGV[1] == 'q' then
  local c = tonumber(redis.call('GET', KEYS[1]))
  if c and c > 0 then redis.call('DECR', KEYS[1]) end
elseif ARGV[1] == 'tb' then
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

/// The decision script for `algorithm`, reading the time with `clock`: the one place a
/// script's source is put together, for the gateway (`REDIS_CLOCK`) and for tests alike.
pub fn decision_script(algorithm: &Algorithm, clock: &str) -> String {
    let body = match algorithm {
        Algorithm::TokenBucket { .. } => TOKEN_BUCKET,
        Algorithm::SlidingWindow { .. } => SLIDING_WINDOW,
        // The window comes from the caller (a calendar in a time zone): no clock read.
        Algorithm::Quota { .. } => return QUOTA.to_string(),
    };
    format!("{clock}{body}")
}

/// The refund script's source (it reads no clock).
pub const REFUND_SOURCE: &str = REFUND;

static TOKEN_BUCKET_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&decision_script(
        &Algorithm::token_bucket(1, 1.0),
        REDIS_CLOCK,
    ))
});
static SLIDING_WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&decision_script(
        &Algorithm::sliding_window(1, 1),
        REDIS_CLOCK,
    ))
});
static REFUND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REFUND));
static QUOTA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(QUOTA));
static QUOTA_ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(QUOTA_ADD));

/// How long after its window's end a quota counter is kept (for `/admin/consumers` and
/// instances whose clocks run a little behind).
const QUOTA_KEEP_S: i64 = 3_600;

/// The decision script's arguments for `algorithm` (before the clock's, if any).
pub fn decision_args(algorithm: &Algorithm) -> [u64; 2] {
    match *algorithm {
        Algorithm::TokenBucket {
            capacity,
            interval_us,
        } => [interval_us, capacity * interval_us],
        Algorithm::SlidingWindow { limit, window_us } => [limit, window_us],
        Algorithm::Quota { limit, .. } => [limit, 0],
    }
}

/// The outcome from the decision script's reply.
pub fn decision_outcome(algorithm: &Algorithm, reply: &[i64]) -> Outcome {
    let get = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
    match algorithm {
        Algorithm::TokenBucket { .. } => algorithm.gcra_outcome(get(0) == 1, get(1)),
        Algorithm::SlidingWindow { .. } => {
            algorithm.window_outcome(get(0) == 1, get(1), get(2), get(3))
        }
        // Quotas are decided by `decide_quota_at`, which knows the window.
        Algorithm::Quota { .. } => algorithm.quota_outcome(get(0) == 1, get(1), 0, 0),
    }
}

/// The refund script's arguments for `algorithm`.
pub fn refund_args(algorithm: &Algorithm) -> (&'static str, u64) {
    match *algorithm {
        Algorithm::TokenBucket { interval_us, .. } => ("tb", interval_us),
        Algorithm::SlidingWindow { .. } => ("sw", 0),
        Algorithm::Quota { .. } => ("q", 0),
    }
}

/// The Redis key of a quota's window: the limit's key and the window's start.
pub fn quota_key(key: &str, window: &Window) -> String {
    format!("{key}:{}", window.start_s)
}

/// Decides one quota request for `key` at `now_us` (wall clock): the window is computed here,
/// so every instance counts the same calendar window (to within their clocks' skew).
/// Returns the outcome and the window's key (for a refund).
pub async fn decide_quota_at(
    store: &RedisStore,
    algorithm: &Algorithm,
    key: &str,
    now_us: u64,
) -> Result<(Outcome, String), StoreError> {
    let Algorithm::Quota { limit, period } = *algorithm else {
        unreachable!("quota only")
    };
    let window = period.window_at((now_us / 1_000_000) as i64);
    let key = quota_key(key, &window);
    let mut inv = QUOTA_SCRIPT.key(&key);
    inv.arg(limit).arg(window.end_s + QUOTA_KEEP_S);
    let reply = store.call(inv).await?;
    let get = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
    let outcome = algorithm.quota_outcome(get(0) == 1, get(1), now_us, window.end_s);
    Ok((outcome, key))
}

/// Adds `count` requests counted locally to a quota window; returns the window's total.
pub async fn add_quota(
    store: &RedisStore,
    key: &str,
    window: &Window,
    count: u64,
) -> Result<u64, StoreError> {
    let mut inv = QUOTA_ADD_SCRIPT.key(key);
    inv.arg(count).arg(window.end_s + QUOTA_KEEP_S);
    let reply = store.call(inv).await?;
    Ok(reply.first().copied().unwrap_or(0).max(0) as u64)
}

/// A quota window's count so far (0 when nothing was counted).
pub async fn quota_used(store: &RedisStore, key: &str) -> Result<u64, StoreError> {
    let key = key.to_string();
    store
        .guarded(|mut conn| async move {
            let v: Option<u64> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok(v.unwrap_or(0))
        })
        .await
}

/// Decides one request for `key`; returns the outcome and the key that counted it.
pub async fn decide(
    store: &RedisStore,
    algorithm: &Algorithm,
    key: &str,
) -> Result<(Outcome, String), StoreError> {
    let script = match algorithm {
        Algorithm::TokenBucket { .. } => &*TOKEN_BUCKET_SCRIPT,
        Algorithm::SlidingWindow { .. } => &*SLIDING_WINDOW_SCRIPT,
        Algorithm::Quota { .. } => {
            return decide_quota_at(store, algorithm, key, algorithm.now_us()).await
        }
    };
    let mut inv = script.key(key);
    let [a, b] = decision_args(algorithm);
    inv.arg(a).arg(b);
    let reply = store.call(inv).await?;
    Ok((decision_outcome(algorithm, &reply), key.to_string()))
}

/// Gives one request back (a later limit refused it). Best effort.
pub async fn refund(store: &RedisStore, algorithm: &Algorithm, key: &str) {
    let mut inv = REFUND_SCRIPT.key(key);
    let (kind, interval) = refund_args(algorithm);
    inv.arg(kind).arg(interval);
    let _ = store.call(inv).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_scripts_read_redis_time_and_tests_can_inject_it() {
        let tb = Algorithm::token_bucket(10, 5.0);
        let sw = Algorithm::sliding_window(100, 60);
        for a in [tb, sw] {
            let prod = decision_script(&a, REDIS_CLOCK);
            assert!(prod.starts_with("local t = redis.call('TIME')"), "{prod}");
            assert!(!prod.contains("ARGV[#ARGV]"));
            let injected = decision_script(&a, ARGUMENT_CLOCK);
            assert!(!injected.contains("'TIME'"));
            // The clock defines `now` before the body uses it.
            assert!(injected.starts_with(ARGUMENT_CLOCK), "{injected}");
        }
        assert_eq!(decision_args(&tb), [200_000, 2_000_000]);
        assert_eq!(decision_args(&sw), [100, 60_000_000]);
        assert_eq!(refund_args(&tb), ("tb", 200_000));
        assert_eq!(refund_args(&sw), ("sw", 0));
    }

    #[test]
    fn replies_become_the_same_outcomes_as_the_local_arithmetic() {
        let tb = Algorithm::token_bucket(10, 5.0);
        // Allowed with the TAT one interval ahead: 9 left.
        assert_eq!(
            decision_outcome(&tb, &[1, 200_000]),
            tb.decide(None, 1_000_000).0
        );
        // A negative or missing field never underflows.
        assert_eq!(decision_outcome(&tb, &[0, -5]), tb.gcra_outcome(false, 0));
        let sw = Algorithm::sliding_window(3, 1);
        assert_eq!(
            decision_outcome(&sw, &[1, 1, 0, 0]),
            sw.decide(None, 5_000_000).0
        );
        assert_eq!(
            decision_outcome(&sw, &[]),
            sw.window_outcome(false, 0, 0, 0)
        );
    }
}
