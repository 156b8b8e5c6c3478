//! Quotas counted locally and added to Redis every `flush_interval_ms` (the Kong `sync_rate`
//! trade-off): one Redis call per key per interval instead of one per request. Each instance
//! admits against the fleet's total as of its last flush plus its own requests since, so the
//! fleet can overrun the limit by what the other instances admit within one interval (see the
//! README for the bound). Pending counts of a stopped instance (at most one interval's) are
//! lost.

use super::algorithm::{Algorithm, Outcome};
use super::calendar::Window;
use crate::redis_store::RedisStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Count {
    /// The window's total in Redis as of the last flush (every instance's).
    known: u64,
    /// Admitted here since the last flush.
    pending: u64,
    window: Window,
}

pub struct Batched {
    store: Arc<RedisStore>,
    interval: Duration,
    counts: Mutex<HashMap<String, Count>>,
    flusher: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batched {
    pub fn new(store: Arc<RedisStore>, interval_ms: u64) -> Batched {
        Batched {
            store,
            interval: Duration::from_millis(interval_ms.max(1)),
            counts: Mutex::new(HashMap::new()),
            flusher: AtomicBool::new(false),
        }
    }

    /// Decides one request for the window key `key` locally; starts the flusher on first use.
    pub fn decide(
        self: &Arc<Self>,
        algorithm: &Algorithm,
        key: String,
        window: Window,
        now_us: u64,
    ) -> Outcome {
        let Algorithm::Quota { limit, .. } = *algorithm else {
            unreachable!("quota only")
        };
        if !self.flusher.swap(true, Ordering::AcqRel) {
            tokio::spawn(flush_loop(Arc::downgrade(self), self.interval));
        }
        let mut counts = lock(&self.counts);
        let c = counts.entry(key).or_insert(Count {
            known: 0,
            pending: 0,
            window,
        });
        let used = c.known + c.pending;
        let allowed = used < limit;
        if allowed {
            c.pending += 1;
        }
        algorithm.quota_outcome(allowed, used + u64::from(allowed), now_us, window.end_s)
    }

    pub fn refund(&self, key: &str) {
        if let Some(c) = lock(&self.counts).get_mut(key) {
            c.pending = c.pending.saturating_sub(1);
        }
    }

    /// The window's count as this instance knows it (the fleet's at the last flush plus its
    /// own since).
    pub fn used(&self, key: &str) -> Option<u64> {
        lock(&self.counts).get(key).map(|c| c.known + c.pending)
    }

    /// Adds every pending count to Redis and learns the fleet's totals; forgets windows that
    /// have ended. A failed add keeps its count pending for the next flush.
    pub async fn flush(&self) {
        let now_s = (super::calendar::wall_us() / 1_000_000) as i64;
        let work: Vec<(String, u64, Window)> = {
            let mut counts = lock(&self.counts);
            counts.retain(|_, c| c.window.end_s > now_s || c.pending > 0);
            counts
                .iter_mut()
                .map(|(k, c)| {
                    let n = std::mem::take(&mut c.pending);
                    (k.clone(), n, c.window)
                })
                .collect()
        };
        for (key, n, window) in work {
            match super::redis::add_quota(&self.store, &key, &window, n).await {
                Ok(total) => {
                    if let Some(c) = lock(&self.counts).get_mut(&key) {
                        c.known = total;
                    }
                }
                Err(_) => {
                    if let Some(c) = lock(&self.counts).get_mut(&key) {
                        c.pending += n;
                    }
                }
            }
        }
    }
}

async fn flush_loop(batched: Weak<Batched>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = batched.upgrade() else { return };
        b.flush().await;
    }
}
