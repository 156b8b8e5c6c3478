//! A bounded map whose entries end at a unix second: the verified-token, introspection,
//! revocation and unknown-kid caches. The lock is held for one lookup or insert; when the map is
//! full, an insert first drops what has expired and, if that is not enough, everything (the
//! caches only save work, so forgetting is always safe).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

pub struct Expiring<K, V> {
    map: Mutex<HashMap<K, (V, u64)>>,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> Expiring<K, V> {
    pub fn new(max: usize) -> Self {
        Expiring {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The value for `key` if its entry has not ended by `now`.
    pub fn get<Q>(&self, key: &Q, now: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    /// Keeps `value` for `key` until `until`.
    pub fn insert(&self, key: K, value: V, until: u64, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max && !map.contains_key(&key) {
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, (value, until));
    }

    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_end_and_the_map_stays_bounded() {
        let m: Expiring<u32, &str> = Expiring::new(2);
        m.insert(1, "a", 10, 0);
        assert_eq!(m.get(&1, 9), Some("a"));
        assert_eq!(m.get(&1, 10), None, "ended");
        m.insert(2, "b", 5, 0);
        m.insert(3, "c", 20, 6); // full: 2 (ended at 5) is dropped, 1 stays
        assert_eq!(m.get(&1, 6), Some("a"));
        assert_eq!(m.get(&3, 6), Some("c"));
        m.insert(4, "d", 20, 7); // full of live entries: cleared first
        assert_eq!(m.get(&1, 7), None);
        assert_eq!(m.get(&4, 7), Some("d"));
    }
}
