//! Consumers and API keys in Redis, read through a bounded local cache.
//!
//! Layout (`key_prefix` default `portcullis:`):
//! - `<prefix>apikey:<hex SHA-256 of the key>` — hash: `consumer` (required), `id` (the key's
//!   id, for logs and limits), `status` (`active` unless it says otherwise).
//! - `<prefix>consumer:<id>` — hash: `tenant`, `plan`, `scopes` (space-separated), `status`,
//!   and `meta.<name>` fields for metadata.
//!
//! One round trip per lookup (a script reads the key and its consumer), through the shared
//! read-through cache (`crate::read_through`): found records for `cache_ttl_ms`, unknown keys
//! for `negative_ttl_ms`, one lookup per key in flight, a found record for up to `stale_ttl_ms`
//! past its TTL while Redis cannot be read, at most `max_entries` records.

use super::{Consumer, StoreSpec, Unresolved};
use crate::read_through::{CacheCounters, CachePolicy, ReadThrough, StoreDown};
use crate::redis_store::RedisStore;
use redis::Script;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

/// KEYS[1]: the API key's hash. ARGV[1]: the consumer key prefix.
/// Returns {} when unknown, else {consumer id, key id, key status, consumer fields…}.
const KEY_LOOKUP: &str = r#"
local k = redis.call('HGETALL', KEYS[1])
local consumer, id, status = nil, '', 'active'
for i = 1, #k, 2 do
  if k[i] == 'consumer' then consumer = k[i + 1]
  elseif k[i] == 'id' then id = k[i + 1]
  elseif k[i] == 'status' then status = k[i + 1] end
end
if not consumer then return {} end
return {consumer, id, status, redis.call('HGETALL', ARGV[1] .. consumer)}
"#;
static KEY_LOOKUP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(KEY_LOOKUP));

/// What the cache is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    ApiKey([u8; 32]),
    Consumer(Box<str>),
}

/// An API key's record: its consumer and its own id.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub consumer: Arc<Consumer>,
    pub key_id: String,
    /// The key itself is active (a consumer's status is checked separately).
    pub active: bool,
}

#[derive(Debug, Clone)]
enum Record {
    Key(Arc<KeyRecord>),
    Consumer(Arc<Consumer>),
}

pub struct ConsumerStore {
    spec: StoreSpec,
    redis: Arc<RedisStore>,
    cache: ReadThrough<CacheKey, Record>,
}

impl ConsumerStore {
    pub fn new(spec: StoreSpec, redis: Arc<RedisStore>) -> ConsumerStore {
        let cache = ReadThrough::new(CachePolicy {
            ttl: spec.ttl,
            negative_ttl: spec.negative_ttl,
            stale_ttl: spec.stale_ttl,
            max_entries: spec.max_entries,
        });
        ConsumerStore { spec, redis, cache }
    }

    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Lookups and cache use, for `/metrics`.
    pub fn counters(&self) -> &CacheCounters {
        &self.cache.counters
    }

    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The record of an API key (by its SHA-256). `Ok(None)`: no such key.
    pub async fn api_key(&self, sha256: &[u8; 32]) -> Result<Option<Arc<KeyRecord>>, Unresolved> {
        match self.lookup(CacheKey::ApiKey(*sha256)).await? {
            Some(Record::Key(k)) => Ok(Some(k)),
            _ => Ok(None),
        }
    }

    /// The consumer `id`. `Ok(None)`: no such consumer.
    pub async fn consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, Unresolved> {
        match self.lookup(CacheKey::Consumer(id.into())).await? {
            Some(Record::Consumer(c)) => Ok(Some(c)),
            _ => Ok(None),
        }
    }

    /// Reads the consumer `id` from Redis now (no cache), for `/admin/consumers`.
    pub async fn consumer_uncached(&self, id: &str) -> Result<Option<Arc<Consumer>>, Unresolved> {
        self.fetch(&CacheKey::Consumer(id.into()))
            .await
            .map(|r| match r {
                Some(Record::Consumer(c)) => Some(c),
                _ => None,
            })
            .map_err(|_| Unresolved::StoreDown(self.spec.on_failure))
    }

    async fn lookup(&self, key: CacheKey) -> Result<Option<Record>, Unresolved> {
        self.cache
            .get(&key, || self.fetch(&key))
            .await
            .map_err(|StoreDown| Unresolved::StoreDown(self.spec.on_failure))
    }

    async fn fetch(&self, key: &CacheKey) -> Result<Option<Record>, StoreDown> {
        let prefix = &self.spec.key_prefix;
        let consumer_prefix = format!("{prefix}consumer:");
        let reply = match key {
            // A cluster keeps the key and its consumer in different slots: two reads.
            CacheKey::ApiKey(sha) if self.redis.is_cluster() => {
                let redis_key = format!("{prefix}apikey:{}", hex::encode(sha));
                let hgetall = |key: String| {
                    self.redis.guarded(|mut conn| async move {
                        redis::cmd("HGETALL")
                            .arg(key)
                            .query_async::<Vec<(String, String)>>(&mut conn)
                            .await
                    })
                };
                match hgetall(redis_key).await {
                    Ok(key_fields) => {
                        let field = |n: &str| {
                            key_fields
                                .iter()
                                .find(|(k, _)| k == n)
                                .map(|(_, v)| v.clone())
                        };
                        match field("consumer") {
                            None => Ok(None),
                            Some(id) => {
                                hgetall(format!("{consumer_prefix}{id}"))
                                    .await
                                    .map(|fields| {
                                        (!fields.is_empty()).then(|| {
                                            Record::Key(Arc::new(KeyRecord {
                                                consumer: Arc::new(consumer_from(&id, fields)),
                                                key_id: field("id").unwrap_or_default(),
                                                active: field("status")
                                                    .is_none_or(|s| s == "active"),
                                            }))
                                        })
                                    })
                            }
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            CacheKey::ApiKey(sha) => {
                let redis_key = format!("{prefix}apikey:{}", hex::encode(sha));
                let mut inv = KEY_LOOKUP_SCRIPT.key(redis_key);
                inv.arg(&consumer_prefix);
                self.redis
                    .guarded(
                        |mut conn| async move { inv.invoke_async::<redis::Value>(&mut conn).await },
                    )
                    .await
                    .map(|v| parse_key_reply(&v))
            }
            CacheKey::Consumer(id) => {
                let redis_key = format!("{consumer_prefix}{id}");
                self.redis
                    .guarded(|mut conn| async move {
                        redis::cmd("HGETALL")
                            .arg(redis_key)
                            .query_async::<Vec<(String, String)>>(&mut conn)
                            .await
                    })
                    .await
                    .map(|fields| {
                        (!fields.is_empty())
                            .then(|| Record::Consumer(Arc::new(consumer_from(id, fields))))
                    })
            }
        };
        reply.map_err(|e| {
            tracing::debug!(error = %e, "consumer store lookup failed");
            StoreDown
        })
    }
}

/// A consumer from its hash's fields.
fn consumer_from(id: &str, fields: Vec<(String, String)>) -> Consumer {
    let mut c = Consumer {
        id: id.to_string(),
        active: true,
        source: "store",
        ..Consumer::default()
    };
    let mut metadata = BTreeMap::new();
    for (k, v) in fields {
        match k.as_str() {
            "tenant" if !v.is_empty() => c.tenant = Some(v),
            "plan" if !v.is_empty() => c.plan = Some(v),
            "scopes" => c.scopes = v.split_ascii_whitespace().map(str::to_string).collect(),
            "status" => c.active = v == "active",
            _ => {
                if let Some(name) = k.strip_prefix("meta.") {
                    metadata.insert(name.to_string(), v);
                }
            }
        }
    }
    c.metadata = metadata;
    c
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The key script's reply: {} or {consumer, key id, key status, [consumer fields…]}. A key whose
/// consumer has no record is unknown.
fn parse_key_reply(v: &redis::Value) -> Option<Record> {
    let redis::Value::Array(items) = v else {
        return None;
    };
    let [consumer, key_id, status, fields] = items.as_slice() else {
        return None;
    };
    let id = text(consumer)?;
    let redis::Value::Array(fields) = fields else {
        return None;
    };
    if fields.is_empty() {
        return None;
    }
    let pairs: Vec<(String, String)> = fields
        .chunks(2)
        .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
        .collect();
    Some(Record::Key(Arc::new(KeyRecord {
        consumer: Arc::new(consumer_from(&id, pairs)),
        key_id: text(key_id).unwrap_or_default(),
        active: text(status).as_deref() == Some("active"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_become_records() {
        let reply = redis::Value::Array(vec![
            bulk("acme-app"),
            bulk("k1"),
            bulk("active"),
            redis::Value::Array(vec![
                bulk("tenant"),
                bulk("acme"),
                bulk("plan"),
                bulk("pro"),
                bulk("scopes"),
                bulk("read  write"),
                bulk("meta.team"),
                bulk("billing"),
            ]),
        ]);
        let Some(Record::Key(k)) = parse_key_reply(&reply) else {
            panic!("a key record")
        };
        assert_eq!(k.key_id, "k1");
        assert!(k.active && k.consumer.active);
        assert_eq!(k.consumer.plan.as_deref(), Some("pro"));
        assert_eq!(k.consumer.scopes, ["read", "write"]);
        assert_eq!(k.consumer.metadata["team"], "billing");
        // A key whose consumer has no record, and an empty reply: unknown.
        let orphan = redis::Value::Array(vec![
            bulk("gone"),
            bulk(""),
            bulk("active"),
            redis::Value::Array(vec![]),
        ]);
        assert!(parse_key_reply(&orphan).is_none());
        assert!(parse_key_reply(&redis::Value::Array(vec![])).is_none());
        let suspended = consumer_from("x", vec![("status".into(), "suspended".into())]);
        assert!(!suspended.active);
    }
}
