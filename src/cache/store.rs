//! The in-process store: entries in one LRU bounded in bytes (every entry weighed with its
//! head, body and keys), an index from key to the entries that share it (one per `Vary`
//! variant), and an index from surrogate key to entries, for purges.
//!
//! One mutex guards it; it is held only for map operations (no I/O, no allocation of bodies),
//! so a lookup never waits behind anything slow. Eviction happens inside the insert that
//! passes the bound: the accounted bytes never exceed `max_bytes`.
//!
//! Hand-written on the `lru` crate rather than `moka`: purges need range scans by key prefix
//! and surrogate-key lookups, and the bound must hold at every moment, not after the next
//! maintenance pass.

use super::entry::Entry;
use super::key::PARTITION_SEPARATOR;
use http::HeaderMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub struct Store {
    /// `shared`, or the route's name for a route with its own `max_bytes`.
    pub name: String,
    pub max_bytes: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: lru::LruCache<u64, Arc<Entry>>,
    /// Index key → ids of its variants.
    index: BTreeMap<Arc<str>, Vec<u64>>,
    surrogates: HashMap<Box<str>, Vec<u64>>,
    bytes: usize,
    next_id: u64,
    evictions: u64,
}

/// What a lookup found for one index key.
pub enum Found {
    /// No entry for the key at all.
    None,
    /// Entries for the key, none whose `Vary` values match the request. The names they vary
    /// on come back for coalescing.
    OtherVariant(Vec<http::HeaderName>),
    Entry(Arc<Entry>),
}

/// The store's size, for `/admin/cache` and the metrics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub evictions: u64,
}

/// What a purge names.
pub enum Purge<'a> {
    /// Every variant and partition of one URL key.
    Url(&'a str),
    /// Every URL key that starts with this.
    Prefix(&'a str),
    SurrogateKey(&'a str),
}

impl Purge<'_> {
    /// What it names, as given.
    pub fn text(&self) -> &str {
        match self {
            Purge::Url(s) | Purge::Prefix(s) | Purge::SurrogateKey(s) => s,
        }
    }
}

impl Store {
    pub fn new(name: impl Into<String>, max_bytes: usize) -> Store {
        Store {
            name: name.into(),
            max_bytes,
            inner: Mutex::new(Inner {
                entries: lru::LruCache::unbounded(),
                index: BTreeMap::new(),
                surrogates: HashMap::new(),
                bytes: 0,
                next_id: 0,
                evictions: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent enough to read.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The variant of `index_key` that `req` selects (and marks it recently used).
    pub fn lookup(&self, index_key: &str, req: &HeaderMap) -> Found {
        let mut inner = self.lock();
        let Inner { entries, index, .. } = &mut *inner;
        let Some(ids) = index.get(index_key) else {
            return Found::None;
        };
        let mut names = Vec::new();
        for id in ids {
            if let Some(e) = entries.get(id) {
                if e.vary.matches(req) {
                    return Found::Entry(Arc::clone(e));
                }
                for n in e.vary.names() {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        Found::OtherVariant(names)
    }

    /// Stores `entry`, replacing the variant with the same `Vary` values and evicting the least
    /// recently used entries until the bound holds; returns it as stored. An entry larger than
    /// the whole store is refused.
    pub fn insert(&self, entry: Entry) -> Option<Arc<Entry>> {
        if entry.weight > self.max_bytes {
            return None;
        }
        let entry = Arc::new(entry);
        let mut inner = self.lock();
        let same: Vec<u64> = inner
            .index
            .get(&*entry.index_key)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| inner.entries.peek(id).is_some_and(|e| e.vary == entry.vary))
                    .collect()
            })
            .unwrap_or_default();
        for id in same {
            inner.remove(id);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.bytes += entry.weight;
        inner
            .index
            .entry(Arc::clone(&entry.index_key))
            .or_default()
            .push(id);
        for k in entry.surrogate_keys.iter() {
            inner.surrogates.entry(k.clone()).or_default().push(id);
        }
        inner.entries.put(id, Arc::clone(&entry));
        while inner.bytes > self.max_bytes {
            let Some((id, _)) = inner.entries.peek_lru().map(|(id, e)| (*id, e.weight)) else {
                break;
            };
            inner.remove(id);
            inner.evictions += 1;
        }
        Some(entry)
    }

    /// Removes (or, `soft`, marks stale) what `what` names; returns how many entries.
    pub fn purge(&self, what: &Purge, soft: bool) -> usize {
        let mut inner = self.lock();
        let ids: Vec<u64> = match what {
            Purge::Url(url) => {
                let mut from = url.to_string();
                from.push(PARTITION_SEPARATOR);
                inner
                    .index
                    .range::<str, _>((
                        std::ops::Bound::Included(from.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(from.as_str()))
                    .flat_map(|(_, ids)| ids.iter().copied())
                    .collect()
            }
            Purge::Prefix(prefix) => inner
                .index
                .range::<str, _>((
                    std::ops::Bound::Included(*prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
            Purge::SurrogateKey(k) => inner.surrogates.get(*k).cloned().unwrap_or_default(),
        };
        let mut n = 0;
        for id in ids {
            if soft {
                if let Some(e) = inner.entries.peek(&id) {
                    e.invalidated.store(true, Ordering::Relaxed);
                    n += 1;
                }
            } else if inner.remove(id) {
                n += 1;
            }
        }
        n
    }

    /// Puts `fresh` in place of `old` when `old` is still stored (a 304 freshened it); `None`
    /// when it was purged or replaced meanwhile.
    pub fn replace(&self, old: &Arc<Entry>, fresh: Entry) -> Option<Arc<Entry>> {
        let present = {
            let inner = self.lock();
            inner.index.get(&*old.index_key).is_some_and(|ids| {
                ids.iter()
                    .any(|id| inner.entries.peek(id).is_some_and(|e| Arc::ptr_eq(e, old)))
            })
        };
        if present {
            self.insert(fresh)
        } else {
            None
        }
    }

    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            entries: inner.entries.len(),
            bytes: inner.bytes,
            max_bytes: self.max_bytes,
            evictions: inner.evictions,
        }
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> bool {
        let Some(e) = self.entries.pop(&id) else {
            return false;
        };
        self.bytes -= e.weight;
        if let Some(ids) = self.index.get_mut(&*e.index_key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.index.remove(&*e.index_key);
            }
        }
        for k in e.surrogate_keys.iter() {
            if let Some(ids) = self.surrogates.get_mut(k) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.surrogates.remove(k);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::{Freshness, Times};
    use super::super::key::VaryValues;
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::{Duration, SystemTime};

    fn entry(key: &str, body: usize, vary: VaryValues, surrogate: &[&str]) -> Entry {
        let now = SystemTime::now();
        Entry::new(
            key.into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body]),
            vary,
            Times {
                request_time: now,
                response_time: now,
                date: now,
                age_value: 0,
            },
            Freshness {
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                forbids_stale: false,
                always_revalidate: false,
            },
            surrogate.iter().map(|s| Box::from(*s)).collect(),
        )
    }

    #[test]
    fn the_byte_bound_holds_at_every_insert_and_evicts_least_recently_used() {
        let one = entry("k0\0", 1000, VaryValues::default(), &[]).weight;
        let store = Store::new("t", one * 3);
        for i in 0..3 {
            assert!(store
                .insert(entry(&format!("k{i}\0"), 1000, VaryValues::default(), &[]))
                .is_some());
        }
        // Touch k0 so k1 is the least recently used.
        assert!(matches!(
            store.lookup("k0\0", &HeaderMap::new()),
            Found::Entry(_)
        ));
        store.insert(entry("k3\0", 1000, VaryValues::default(), &[]));
        let u = store.usage();
        assert!(u.bytes <= u.max_bytes);
        assert_eq!((u.entries, u.evictions), (3, 1));
        assert!(matches!(
            store.lookup("k1\0", &HeaderMap::new()),
            Found::None
        ));
        assert!(matches!(
            store.lookup("k0\0", &HeaderMap::new()),
            Found::Entry(_)
        ));
        assert!(store
            .insert(entry("big\0", one * 4, VaryValues::default(), &[]))
            .is_none());
    }

    #[test]
    fn variants_share_a_key_and_purges_find_them_by_url_prefix_and_surrogate() {
        let store = Store::new("t", 1 << 20);
        let lang = http::HeaderName::from_static("accept-language");
        let mut en = HeaderMap::new();
        en.insert(&lang, "en".parse().unwrap());
        let mut fr = HeaderMap::new();
        fr.insert(&lang, "fr".parse().unwrap());
        store.insert(entry(
            "http://h/a\0",
            10,
            VaryValues::of([&lang], &en),
            &["s1"],
        ));
        store.insert(entry("http://h/a\0", 10, VaryValues::of([&lang], &fr), &[]));
        store.insert(entry("http://h/a\0p1", 10, VaryValues::default(), &[]));
        store.insert(entry("http://h/ab\0", 10, VaryValues::default(), &["s1"]));
        assert!(matches!(store.lookup("http://h/a\0", &fr), Found::Entry(_)));
        assert!(matches!(
            store.lookup("http://h/a\0", &HeaderMap::new()),
            Found::OtherVariant(n) if n == vec![lang.clone()]
        ));
        // The same variant again replaces the first.
        store.insert(entry("http://h/a\0", 10, VaryValues::of([&lang], &en), &[]));
        assert_eq!(store.usage().entries, 4);
        assert_eq!(store.purge(&Purge::SurrogateKey("s1"), false), 1);
        assert_eq!(store.purge(&Purge::Url("http://h/a"), true), 3, "soft");
        assert_eq!(store.usage().entries, 3);
        assert_eq!(store.purge(&Purge::Url("http://h/a"), false), 3);
        store.insert(entry("http://h/ab\0", 10, VaryValues::default(), &[]));
        assert_eq!(store.purge(&Purge::Prefix("http://h/"), false), 1);
        let u = store.usage();
        assert_eq!((u.entries, u.bytes), (0, 0));
    }
}
