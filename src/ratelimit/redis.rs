//! Limits shared by every gateway instance through the shared Redis server: one round trip per
//! decision (an atomic Lua script, EVALSHA with EVAL fallback), Redis's own clock (`TIME`) so
//! instances with skewed clocks agree, keys that expire by themselves. The connection, timeout
//! and breaker are the shared store's (`crate::redis_store`).

use super::algorithm::{Algorithm, Outcome};
use crate::redis_store::{RedisStore, StoreError};
use redis::Script;
use std::sync::LazyLock;

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

static TOKEN_BUCKET_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TOKEN_BUCKET));
static SLIDING_WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SLIDING_WINDOW));
static REFUND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REFUND));

/// Decides one request for `key`.
pub async fn decide(
    store: &RedisStore,
    algorithm: &Algorithm,
    key: &str,
) -> Result<Outcome, StoreError> {
    match *algorithm {
        Algorithm::TokenBucket {
            capacity,
            interval_us,
        } => {
            let mut inv = TOKEN_BUCKET_SCRIPT.key(key);
            inv.arg(interval_us).arg(capacity * interval_us);
            let v = store.call(inv).await?;
            let (allowed, ahead) = (v.first() == Some(&1), *v.get(1).unwrap_or(&0));
            Ok(algorithm.gcra_outcome(allowed, ahead.max(0) as u64))
        }
        Algorithm::SlidingWindow { limit, window_us } => {
            let mut inv = SLIDING_WINDOW_SCRIPT.key(key);
            inv.arg(limit).arg(window_us);
            let v = store.call(inv).await?;
            let get = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
            Ok(algorithm.window_outcome(get(0) == 1, get(1), get(2), get(3)))
        }
    }
}

/// Gives one request back (a later limit refused it). Best effort.
pub async fn refund(store: &RedisStore, algorithm: &Algorithm, key: &str) {
    let mut inv = REFUND_SCRIPT.key(key);
    match *algorithm {
        Algorithm::TokenBucket { interval_us, .. } => inv.arg("tb").arg(interval_us),
        Algorithm::SlidingWindow { .. } => inv.arg("sw").arg(0),
    };
    let _ = store.call(inv).await;
}
