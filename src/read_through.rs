//! A bounded read-through cache in front of a slow store (Redis): what the consumer store and
//! the tenant status source share.
//!
//! Found values are kept for `ttl`, "no such record" answers for `negative_ttl`; one fetch per
//! key is in flight at a time (later callers wait on the first one's cell; if its request is
//! cancelled, the next waiter fetches); while the store cannot be read, a found value is used
//! for up to `stale_ttl` past its TTL. At most `max_entries` values are kept (least recently
//! used go first). The lock is held for one map operation, never across the fetch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_ttl: Duration,
    pub max_entries: usize,
}

/// Fetches and cache use, for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub found: AtomicU64,
    pub unknown: AtomicU64,
    pub failed: AtomicU64,
    pub hits: AtomicU64,
    pub negative_hits: AtomicU64,
    /// Served from a value past its TTL because the store could not be read.
    pub stale: AtomicU64,
}

/// The store could not be read and nothing usable was cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

struct Cached<V> {
    /// None: the store said there is no such record.
    value: Option<V>,
    fetched: Instant,
}

type Flight<V> = Arc<OnceCell<Result<Option<V>, StoreDown>>>;

pub struct ReadThrough<K, V> {
    policy: CachePolicy,
    cache: Mutex<lru::LruCache<K, Cached<V>>>,
    in_flight: Mutex<HashMap<K, Flight<V>>>,
    pub counters: CacheCounters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Hash + Eq + Clone, V: Clone> ReadThrough<K, V> {
    pub fn new(policy: CachePolicy) -> Self {
        let cap = std::num::NonZeroUsize::new(policy.max_entries.max(1)).expect("at least 1");
        ReadThrough {
            policy,
            cache: Mutex::new(lru::LruCache::new(cap)),
            in_flight: Mutex::new(HashMap::new()),
            counters: CacheCounters::default(),
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.cache).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for `key`: cached while fresh, else fetched (`Ok(None)`: no such record).
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<Option<V>, StoreDown>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreDown>>,
    {
        let now = Instant::now();
        let stale = {
            let mut cache = lock(&self.cache);
            match cache.get(key) {
                Some(c) => {
                    let ttl = if c.value.is_some() {
                        self.policy.ttl
                    } else {
                        self.policy.negative_ttl
                    };
                    if now.duration_since(c.fetched) < ttl {
                        let counter = if c.value.is_some() {
                            &self.counters.hits
                        } else {
                            &self.counters.negative_hits
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        return Ok(c.value.clone());
                    }
                    c.value.clone().filter(|_| {
                        now.duration_since(c.fetched) < self.policy.ttl + self.policy.stale_ttl
                    })
                }
                None => None,
            }
        };
        let flight: Flight<V> = Arc::clone(lock(&self.in_flight).entry(key.clone()).or_default());
        let result = flight
            .get_or_init(|| self.fetch_and_keep(key, fetch))
            .await
            .clone();
        {
            let mut in_flight = lock(&self.in_flight);
            if in_flight.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                in_flight.remove(key);
            }
        }
        match (result, stale) {
            (Ok(v), _) => Ok(v),
            (Err(StoreDown), Some(stale)) => {
                self.counters.stale.fetch_add(1, Ordering::Relaxed);
                Ok(Some(stale))
            }
            (Err(StoreDown), None) => Err(StoreDown),
        }
    }

    /// Fetches, counts and caches what the store said (a failure caches nothing: a stale value
    /// stays).
    async fn fetch_and_keep<F, Fut>(&self, key: &K, fetch: F) -> Result<Option<V>, StoreDown>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreDown>>,
    {
        let value = fetch().await;
        let counter = match &value {
            Ok(Some(_)) => &self.counters.found,
            Ok(None) => &self.counters.unknown,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let value = value?;
        lock(&self.cache).put(
            key.clone(),
            Cached {
                value: value.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn policy(ttl_ms: u64, stale_ms: u64) -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(ttl_ms),
            stale_ttl: Duration::from_millis(stale_ms),
            max_entries: 2,
        }
    }

    #[tokio::test]
    async fn fresh_values_are_served_stale_ones_only_while_the_store_is_down() {
        let c: ReadThrough<String, u32> = ReadThrough::new(policy(40, 10_000));
        let fetches = AtomicUsize::new(0);
        let up = |v: Option<u32>| {
            fetches.fetch_add(1, Ordering::Relaxed);
            async move { Ok(v) }
        };
        let k = "a".to_string();
        assert_eq!(c.get(&k, || up(Some(1))).await, Ok(Some(1)));
        assert_eq!(c.get(&k, || up(Some(2))).await, Ok(Some(1)), "cached");
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let down = || async { Err(StoreDown) };
        assert_eq!(c.get(&k, down).await, Ok(Some(1)), "stale while down");
        assert_eq!(c.counters.stale.load(Ordering::Relaxed), 1);
        assert_eq!(
            c.get(&k, || up(Some(3))).await,
            Ok(Some(3)),
            "refetched when up"
        );
        let none = "b".to_string();
        assert_eq!(c.get(&none, || up(None)).await, Ok(None));
        assert_eq!(c.get(&none, down).await, Ok(None), "negative answer cached");
        assert_eq!(c.get(&"z".to_string(), down).await, Err(StoreDown));
        // Bounded: a third key pushes out the least recently used.
        assert!(c.len() <= 2);
    }

    #[tokio::test]
    async fn one_fetch_per_key_is_in_flight() {
        let c: Arc<ReadThrough<u8, u8>> = Arc::new(ReadThrough::new(policy(10_000, 0)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, fetches) = (Arc::clone(&c), Arc::clone(&fetches));
            tasks.push(tokio::spawn(async move {
                c.get(&1, || async {
                    fetches.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(Some(9))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(Some(9)));
        }
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }
}
