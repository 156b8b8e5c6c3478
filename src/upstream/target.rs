//! Runtime state of one upstream target that outlives config snapshots: in-flight count,
//! health, circuit breaker and counters. Keyed by (upstream, address) and carried across
//! reloads, so a reload neither resets a breaker nor forgets a failed health check.

use super::breaker::{Breaker, BreakerConfig};
use super::pool::TargetPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct TargetState {
    pub in_flight: AtomicU64,
    /// Set by active health checks; true until a check says otherwise.
    healthy: AtomicBool,
    /// Whether a health check has ever run (so "healthy" is known, not assumed).
    pub checked: AtomicBool,
    pub breaker: Breaker,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

impl TargetState {
    pub fn new() -> TargetState {
        let s = TargetState::default();
        s.healthy.store(true, Ordering::Relaxed);
        s
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.checked.store(true, Ordering::Relaxed);
    }

    pub fn record(&self, success: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !success {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A target as one snapshot sees it: its address and weight, pooled connections, shared state.
pub struct Target {
    pub pool: Arc<TargetPool>,
    pub state: Arc<TargetState>,
    pub weight: u32,
}

impl Target {
    /// Healthy and not held off by an open breaker.
    pub fn available(&self, breaker: Option<&BreakerConfig>, now: Instant) -> bool {
        self.state.is_healthy()
            && breaker.is_none_or(|cfg| self.state.breaker.would_admit(cfg, now))
    }
}
