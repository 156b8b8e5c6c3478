//! The shared tier (`cache.store: redis`): entries a fleet of gateways share through Redis,
//! behind each gateway's in-process store.
//!
//! - An in-process miss asks Redis (one `HGETALL` of the key's variants, under the Redis
//!   client's timeout and breaker); a hit is copied into the in-process store. Any Redis error,
//!   timeout or open breaker is a miss — never an error to the client — and is counted.
//! - A stored entry is written to Redis off the request path (at most `MAX_WRITES` writes in
//!   flight; more are dropped and counted), with an expiry covering its stale windows.
//! - A purge (and an unsafe method's invalidation) deletes the Redis copies and is published on
//!   `{prefix}purge`; every gateway subscribed drops its in-process copies.
//!
//! Keys: `{prefix}e:{url}\0{partition}` is a hash of that key's variants (field: the variant's
//! `Vary` values); `{prefix}u:{url}` the set of those hashes for one URL (purge by URL and by
//! prefix); `{prefix}s:{surrogate key}` the set of hashes tagged with it.

use super::entry::{Entry, Freshness, Times};
use super::key::{VaryValues, PARTITION_SEPARATOR};
use super::store::Purge;
use crate::redis_store::RedisStore;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes to Redis in flight at most; more are dropped (the entry stays in process).
const MAX_WRITES: usize = 64;
/// How long a shared copy outlives its stale windows (so a 304 can still freshen it).
const EXTRA_KEEP: Duration = Duration::from_secs(60);

/// Stores a variant and indexes it. KEYS: hash, url set, surrogate sets…; ARGV: field, value,
/// expiry in ms.
const STORE_SCRIPT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ms = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return {1}
"#;

/// Deletes every hash in the sets KEYS, and the sets. Returns how many hashes existed.
const PURGE_SCRIPT: &str = r#"
local n = 0
for i = 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, m in ipairs(members) do n = n + redis.call('DEL', m) end
  redis.call('DEL', KEYS[i])
end
return {n}
"#;

static STORE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(STORE_SCRIPT));
static PURGE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PURGE_SCRIPT));

/// What the shared tier did, for `/metrics`.
#[derive(Debug, Default)]
pub struct SharedCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Redis errors, timeouts and calls refused by its breaker: each one a miss.
    pub errors: AtomicU64,
    pub writes: AtomicU64,
    pub writes_dropped: AtomicU64,
    pub purges_received: AtomicU64,
}

pub struct SharedTier {
    pub redis: Arc<RedisStore>,
    prefix: String,
    writes: Arc<tokio::sync::Semaphore>,
    pub counters: Arc<SharedCounters>,
    subscriber: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for SharedTier {
    fn drop(&mut self) {
        if let Some(task) = self.subscriber.get() {
            task.abort();
        }
    }
}

impl SharedTier {
    pub fn new(redis: Arc<RedisStore>, prefix: String) -> SharedTier {
        // On a Redis Cluster the tier's keys share one hash tag, so the scripts that write an
        // entry with its index sets (and purge them) touch one slot, and a prefix purge's SCAN
        // one node. The tier then lives on one node: it is a cache, not the fleet's store.
        let prefix = if redis.is_cluster() && !prefix.contains('{') {
            format!("{{{prefix}}}")
        } else {
            prefix
        };
        SharedTier {
            redis,
            prefix,
            writes: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES)),
            counters: Arc::default(),
            subscriber: OnceLock::new(),
        }
    }

    fn hash_key(&self, index_key: &str) -> String {
        format!("{}e:{index_key}", self.prefix)
    }

    fn url_set(&self, url: &str) -> String {
        format!("{}u:{url}", self.prefix)
    }

    fn surrogate_set(&self, key: &str) -> String {
        format!("{}s:{key}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// The variant of `index_key` that `req` selects, from Redis; `None` on a miss or any
    /// failure (counted).
    pub async fn lookup(&self, index_key: &Arc<str>, req: &HeaderMap) -> Option<Entry> {
        let key = self.hash_key(index_key);
        let got: Result<Vec<(Vec<u8>, Vec<u8>)>, _> = self
            .redis
            .guarded(|mut conn| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await
            })
            .await;
        let variants = match got {
            Ok(v) => v,
            Err(_) => {
                self.counters.errors.fetch_add(1, Relaxed);
                return None;
            }
        };
        let found = variants
            .into_iter()
            .filter_map(|(_, value)| decode(Arc::clone(index_key), &value))
            .find(|e| e.vary.matches(req));
        match found {
            Some(e) => {
                self.counters.hits.fetch_add(1, Relaxed);
                Some(e)
            }
            None => {
                self.counters.misses.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Writes `entry` to Redis in the background (dropped when too many writes are in flight).
    pub fn write(self: &Arc<Self>, entry: &Entry) {
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            self.counters.writes_dropped.fetch_add(1, Relaxed);
            return;
        };
        let f = entry.freshness;
        let keep = f.lifetime + f.stale_while_revalidate.max(f.stale_if_error) + EXTRA_KEEP;
        let value = encode(entry);
        let field = entry.vary.text();
        let url = entry
            .index_key
            .split(PARTITION_SEPARATOR)
            .next()
            .unwrap_or("")
            .to_string();
        let mut keys = vec![self.hash_key(&entry.index_key), self.url_set(&url)];
        keys.extend(entry.surrogate_keys.iter().map(|k| self.surrogate_set(k)));
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let mut inv = STORE.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(field)
                .arg(value.as_ref())
                .arg(keep.as_millis() as u64);
            match tier.redis.call(inv).await {
                Ok(_) => tier.counters.writes.fetch_add(1, Relaxed),
                Err(_) => tier.counters.errors.fetch_add(1, Relaxed),
            };
        });
    }

    /// Deletes the shared copies `what` names and tells every gateway to drop theirs.
    pub async fn purge(&self, what: &Purge<'_>, soft: bool) -> Result<usize, String> {
        let sets: Vec<String> = match what {
            Purge::Url(url) => vec![self.url_set(url)],
            Purge::SurrogateKey(k) => vec![self.surrogate_set(k)],
            Purge::Prefix(p) => {
                self.scan(&format!("{}u:{}*", self.prefix, glob_escape(p)))
                    .await?
            }
        };
        let mut n = 0;
        for chunk in sets.chunks(64) {
            let mut inv = PURGE.prepare_invoke();
            for k in chunk {
                inv.key(k);
            }
            let v = self.redis.call(inv).await.map_err(|e| e.to_string())?;
            n += v.first().copied().unwrap_or(0) as usize;
        }
        let message = serde_json::json!({
            "url": matches!(what, Purge::Url(_)).then(|| what.text()),
            "prefix": matches!(what, Purge::Prefix(_)).then(|| what.text()),
            "surrogate_key": matches!(what, Purge::SurrogateKey(_)).then(|| what.text()),
            "soft": soft,
        })
        .to_string();
        let channel = self.channel();
        self.redis
            .guarded(|mut conn| async move {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&message)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        let mut cursor: u64 = 0;
        // Bounded: a prefix purge looks at no more than this many batches.
        for _ in 0..10_000 {
            // On a cluster every key of the tier shares the prefix's hash tag: one node.
            let (next, keys) = self
                .redis
                .scan_step(&self.prefix, cursor, pattern, 500)
                .await
                .map_err(|e| e.to_string())?;
            found.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(found)
    }

    /// Starts (once) the subscription that applies other gateways' purges to `runtime`'s
    /// in-process stores. Holds the runtime weakly: a reload's new runtime starts its own.
    pub fn subscribe(&self, runtime: Weak<super::CacheRuntime>) {
        if self.subscriber.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let redis = Arc::clone(&self.redis);
        let channel = self.channel();
        let counters = Arc::clone(&self.counters);
        let task = tokio::spawn(async move {
            use futures_lite_next::next;
            let mut backoff = Duration::from_millis(100);
            loop {
                if runtime.strong_count() == 0 {
                    return;
                }
                let sub = async {
                    let client = redis.current_client().await.map_err(|e| {
                        redis::RedisError::from((redis::ErrorKind::Io, "redis", e.to_string()))
                    })?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(5), sub).await {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = next(&mut messages).await {
                        let Some(rt) = runtime.upgrade() else { return };
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        counters.purges_received.fetch_add(1, Relaxed);
                        rt.apply_remote_purge(&payload);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        if self.subscriber.set(task).is_err() {
            // Another caller won the race; its task serves.
        }
    }
}

/// The next item of a stream, without a stream-utilities crate.
mod futures_lite_next {
    pub async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

const MAGIC: &[u8; 4] = b"PCE1";

/// An entry as stored in Redis: a versioned binary layout (lengths before bytes).
pub fn encode(e: &Entry) -> Bytes {
    let mut b = BytesMut::with_capacity(e.weight + 64);
    b.put_slice(MAGIC);
    b.put_u16(e.status.as_u16());
    for t in [e.times.request_time, e.times.response_time, e.times.date] {
        b.put_u64(ms(t));
    }
    b.put_u64(e.times.age_value);
    let f = e.freshness;
    for d in [f.lifetime, f.stale_while_revalidate, f.stale_if_error] {
        b.put_u64(d.as_millis() as u64);
    }
    b.put_u8(u8::from(f.forbids_stale) | (u8::from(f.always_revalidate) << 1));
    b.put_u32(e.headers.len() as u32);
    for (n, v) in &e.headers {
        put_bytes(&mut b, n.as_str().as_bytes());
        put_bytes(&mut b, v.as_bytes());
    }
    let vary = e.vary.pairs();
    b.put_u32(vary.len() as u32);
    for (n, v) in vary {
        put_bytes(&mut b, n.as_str().as_bytes());
        match v {
            Some(v) => {
                b.put_u8(1);
                put_bytes(&mut b, v.as_bytes());
            }
            None => b.put_u8(0),
        }
    }
    b.put_u32(e.surrogate_keys.len() as u32);
    for k in e.surrogate_keys.iter() {
        put_bytes(&mut b, k.as_bytes());
    }
    put_bytes(&mut b, &e.body);
    b.freeze()
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

/// Back from `encode`; `None` for anything malformed (a miss, never a panic).
pub fn decode(index_key: Arc<str>, data: &[u8]) -> Option<Entry> {
    let mut b = data;
    if b.len() < 4 || &b[..4] != MAGIC {
        return None;
    }
    b.advance(4);
    let status = StatusCode::from_u16(get_u16(&mut b)?).ok()?;
    let times = Times {
        request_time: from_ms(get_u64(&mut b)?),
        response_time: from_ms(get_u64(&mut b)?),
        date: from_ms(get_u64(&mut b)?),
        age_value: get_u64(&mut b)?,
    };
    let lifetime = Duration::from_millis(get_u64(&mut b)?);
    let swr = Duration::from_millis(get_u64(&mut b)?);
    let sie = Duration::from_millis(get_u64(&mut b)?);
    let flags = get_u8(&mut b)?;
    let freshness = Freshness {
        lifetime,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        forbids_stale: flags & 1 != 0,
        always_revalidate: flags & 2 != 0,
    };
    let n = get_u32(&mut b)? as usize;
    let mut headers = HeaderMap::with_capacity(n.min(256));
    for _ in 0..n {
        let name = HeaderName::from_bytes(get_bytes(&mut b)?).ok()?;
        let value = HeaderValue::from_bytes(get_bytes(&mut b)?).ok()?;
        headers.append(name, value);
    }
    let n = get_u32(&mut b)? as usize;
    let mut vary = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = HeaderName::from_bytes(get_bytes(&mut b)?).ok()?;
        let value = match get_u8(&mut b)? {
            1 => Some(std::str::from_utf8(get_bytes(&mut b)?).ok()?.into()),
            _ => None,
        };
        vary.push((name, value));
    }
    let n = get_u32(&mut b)? as usize;
    let mut surrogate_keys = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        surrogate_keys.push(std::str::from_utf8(get_bytes(&mut b)?).ok()?.into());
    }
    let body = Bytes::copy_from_slice(get_bytes(&mut b)?);
    if !b.is_empty() {
        return None;
    }
    Some(Entry::new(
        index_key,
        status,
        headers,
        body,
        VaryValues::from_pairs(vary),
        times,
        freshness,
        surrogate_keys.into_boxed_slice(),
    ))
}

fn get_u8(b: &mut &[u8]) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn get_u16(b: &mut &[u8]) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn get_u32(b: &mut &[u8]) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn get_u64(b: &mut &[u8]) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

fn get_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_u32(b)? as usize;
    if b.len() < n {
        return None;
    }
    let (v, rest) = b.split_at(n);
    *b = rest;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip_and_malformed_bytes_are_a_miss() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let mut req = HeaderMap::new();
        req.insert("accept-language", "en".parse().unwrap());
        let lang = HeaderName::from_static("accept-language");
        let enc = HeaderName::from_static("accept-encoding");
        let now = SystemTime::now();
        let e = Entry::new(
            "http://h/p\0".into(),
            StatusCode::NOT_FOUND,
            headers,
            Bytes::from_static(b"body bytes"),
            VaryValues::of([&lang, &enc], &req),
            Times {
                request_time: now,
                response_time: now,
                date: now,
                age_value: 7,
            },
            Freshness {
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::from_secs(9),
                forbids_stale: true,
                always_revalidate: false,
            },
            vec!["k1".into()].into_boxed_slice(),
        );
        let bytes = encode(&e);
        let d = decode("http://h/p\0".into(), &bytes).unwrap();
        assert_eq!(d.status, StatusCode::NOT_FOUND);
        assert_eq!(d.body, "body bytes");
        assert_eq!(d.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(d.vary, e.vary);
        assert!(d.vary.matches(&req));
        assert_eq!(d.times.age_value, 7);
        assert!(d.freshness.forbids_stale && !d.freshness.always_revalidate);
        assert_eq!(d.freshness.stale_if_error, Duration::from_secs(9));
        assert_eq!(&*d.surrogate_keys, &["k1".into()] as &[Box<str>]);
        assert_eq!(d.weight, e.weight);
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert!(decode("k".into(), &bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut extra = bytes.to_vec();
        extra.push(0);
        assert!(decode("k".into(), &extra).is_none());
    }
}
