//! Active health checks: an HTTP GET to each target on an interval, over the target's own
//! transport (`TargetPool::probe`: plain, TLS or h2c); `healthy_threshold` successes in a row mark
//! a target up, `unhealthy_threshold` failures mark it down.

use super::pool::TargetPool;
use super::target::TargetState;
use crate::config::HealthCheck;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

async fn run(upstream: String, pool: Arc<TargetPool>, state: Arc<TargetState>, cfg: HealthCheck) {
    let target = pool.authority().clone();
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let healthy = tokio::time::timeout(timeout, pool.probe(&cfg.path))
            .await
            .unwrap_or(false);
        if healthy {
            successes += 1;
            failures = 0;
            if successes >= cfg.healthy_threshold
                && (!state.is_healthy()
                    || !state.checked.load(std::sync::atomic::Ordering::Relaxed))
            {
                if !state.is_healthy() {
                    tracing::info!(upstream = %upstream, target = %target, "target is healthy again");
                }
                state.set_healthy(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= cfg.unhealthy_threshold && state.is_healthy() {
                tracing::warn!(upstream = %upstream, target = %target, failures, "target failed its health checks; taking it out of rotation");
                state.set_healthy(false);
            }
        }
    }
}

/// (upstream name, target address).
type CheckKey = (String, String);

/// The running checkers, one per (upstream, target) that has a `health_check`.
#[derive(Default)]
pub struct HealthCheckers {
    running: HashMap<CheckKey, (HealthCheck, Arc<TargetPool>, JoinHandle<()>)>,
}

impl HealthCheckers {
    /// Starts, restarts or stops checkers to match `upstreams`. Must run inside the runtime.
    pub fn sync(&mut self, upstreams: &[super::CompiledUpstream]) {
        let mut wanted: HashMap<CheckKey, (HealthCheck, Arc<TargetPool>, Arc<TargetState>)> =
            HashMap::new();
        for u in upstreams {
            let Some(hc) = &u.health_check else { continue };
            for t in &u.targets {
                wanted.insert(
                    (u.name.to_string(), t.pool.authority().to_string()),
                    (hc.clone(), Arc::clone(&t.pool), Arc::clone(&t.state)),
                );
            }
        }
        // A checker is kept while its settings and its target's pool (protocol, TLS) are the same.
        self.running.retain(|key, (cfg, pool, handle)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(w, p, _)| w == cfg && Arc::ptr_eq(p, pool));
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (cfg, pool, state)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let handle = tokio::spawn(run(key.0.clone(), Arc::clone(&pool), state, cfg.clone()));
            self.running.insert(key, (cfg, pool, handle));
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (_, _, h)) in self.running.drain() {
            h.abort();
        }
    }
}
