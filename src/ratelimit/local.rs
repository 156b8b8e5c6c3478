//! In-process limit state: 64 shards, each a small hash map behind its own mutex held only for
//! one map lookup and a few integer operations. Memory is bounded: a shard holds at most
//! `max_keys / 64` entries; when full, entries whose state has become equivalent to "never
//! seen" are dropped first (exact), then the ones closest to that point (nearly exact).

use super::algorithm::{Algorithm, Outcome, State};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

const SHARDS: usize = 64;

/// Keys are already hashed (with a random seed) by `KeySpec::local`: use them as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, State, BuildHasherDefault<Prehashed>>;

/// Upper bound of memory per stored key: a 32-byte entry (8-byte key, 24-byte state) and a
/// control byte per bucket, buckets at a worst-case load of 7/16 just after the map grows, and
/// the allocator's share of the tables left behind by growth (measured under mimalloc: ~115
/// bytes per key at the bound, see tests/rate_limit_memory.rs).
pub const BYTES_PER_KEY: usize = 128;

pub struct LocalStore {
    algorithm: Algorithm,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// Microseconds on the process's monotonic clock.
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    // Start well above zero so that "now" minus any interval never underflows.
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1_000_000_000
}

impl LocalStore {
    pub fn new(algorithm: Algorithm, max_keys: usize) -> LocalStore {
        LocalStore {
            algorithm,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the map bucket; take the shard from the high ones.
        let i = (key >> 58) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn decide(&self, key: u64, now: u64) -> Outcome {
        let mut shard = self.shard(key);
        let (outcome, state) = self.algorithm.decide(shard.get(&key).copied(), now);
        if outcome.allowed {
            if shard.len() >= self.per_shard && !shard.contains_key(&key) {
                self.make_room(&mut shard, now);
            }
            shard.insert(key, state);
        }
        outcome
    }

    /// A quota's count for `key` in the window starting at `index` (0 when none).
    pub fn used_in(&self, key: u64, index: u64) -> u64 {
        match self.shard(key).get(&key) {
            Some(State::Window {
                index: i, current, ..
            }) if *i == index => u64::from(*current),
            _ => 0,
        }
    }

    /// Gives back one request a later limit refused.
    pub fn refund(&self, key: u64) {
        let mut shard = self.shard(key);
        if let Some(s) = shard.get_mut(&key) {
            *s = self.algorithm.refund(*s);
        }
    }

    /// Drops forgettable entries; if none, the eighth of the shard closest to forgettable.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        let a = self.algorithm;
        shard.retain(|_, s| a.fresh_at(s) > now);
        if shard.len() < self.per_shard {
            return;
        }
        let mut by_fresh: Vec<(u64, u64)> =
            shard.iter().map(|(k, s)| (a.fresh_at(s), *k)).collect();
        let drop = (self.per_shard / 8).max(1);
        by_fresh.select_nth_unstable(drop - 1);
        for (_, k) in &by_fresh[..drop] {
            shard.remove(k);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys held at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        let store = LocalStore::new(
            Algorithm::TokenBucket {
                capacity: 10,
                interval_us: 200_000,
            },
            10_000,
        );
        let now = now_us();
        // All at the same instant: nothing ever becomes forgettable, so eviction must cap it.
        for k in 0..1_000_000u64 {
            assert!(
                store
                    .decide(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), now)
                    .allowed
            );
        }
        assert!(store.len() <= store.capacity(), "{}", store.len());
        assert!(store.capacity() <= 10_000 + SHARDS);
        // A key used hard recently is still limited (eviction takes the nearly-fresh first).
        let hot = 42u64 << 58 | 7;
        for _ in 0..10 {
            store.decide(hot, now);
        }
        assert!(!store.decide(hot, now).allowed);
    }
}
