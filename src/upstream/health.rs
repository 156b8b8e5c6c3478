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

/// Passes and failures in a row, and the verdict they reach.
#[derive(Debug, Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Records one check; returns the target's new health when this check changes it (or,
    /// for the first healthy verdict, confirms a target that was never checked).
    fn record(
        &mut self,
        passed: bool,
        cfg: &HealthCheck,
        healthy: bool,
        checked: bool,
    ) -> Option<bool> {
        if passed {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= cfg.healthy_threshold && (!healthy || !checked)).then_some(true)
        } else {
            self.failures += 1;
            self.successes = 0;
            (self.failures >= cfg.unhealthy_threshold && healthy).then_some(false)
        }
    }
}

async fn run(upstream: String, pool: Arc<TargetPool>, state: Arc<TargetState>, cfg: HealthCheck) {
    let target = pool.authority().clone();
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut streak = Streak::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let passed = tokio::time::timeout(timeout, pool.probe(&cfg.path))
            .await
            .unwrap_or(false);
        let healthy = state.is_healthy();
        let checked = state.checked.load(std::sync::atomic::Ordering::Relaxed);
        match streak.record(passed, &cfg, healthy, checked) {
            Some(true) => {
                if !healthy {
                    tracing::info!(upstream = %upstream, target = %target, "target is healthy again");
                }
                state.set_healthy(true);
            }
            Some(false) => {
                tracing::warn!(upstream = %upstream, target = %target, failures = streak.failures, "target failed its health checks; taking it out of rotation");
                state.set_healthy(false);
            }
            None => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(healthy_threshold: u32, unhealthy_threshold: u32) -> HealthCheck {
        let yaml = format!(
            "path: /health\nhealthy_threshold: {healthy_threshold}\nunhealthy_threshold: {unhealthy_threshold}\n"
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    /// Feeds `checks` (true: passed) to a streak starting from a target that starts up and
    /// unchecked, applying each verdict; returns the health after each check.
    fn run(cfg: &HealthCheck, checks: &[bool]) -> Vec<bool> {
        let (mut streak, mut healthy, mut checked) = (Streak::default(), true, false);
        checks
            .iter()
            .map(|&passed| {
                if let Some(h) = streak.record(passed, cfg, healthy, checked) {
                    healthy = h;
                    checked = true;
                }
                healthy
            })
            .collect()
    }

    #[test]
    fn failures_in_a_row_take_a_target_out_and_passes_in_a_row_bring_it_back() {
        let c = cfg(2, 3);
        let (t, f) = (true, false);
        assert_eq!(run(&c, &[f, f, f]), [t, t, f], "down on the third failure");
        assert_eq!(
            run(&c, &[f, f, f, t, t]),
            [t, t, f, f, t],
            "up on the second pass"
        );
        // Alternating results never make a streak: the target stays as it was.
        assert_eq!(run(&c, &[f, t, f, t, f, t, f, f]), [t; 8]);
        assert_eq!(run(&c, &[f, f, f, t, f, t, f, t]), [t, t, f, f, f, f, f, f]);
    }

    #[test]
    fn verdicts_are_given_once_per_change() {
        let c = cfg(1, 1);
        let mut s = Streak::default();
        // An unchecked target is confirmed healthy by its first pass, then left alone.
        assert_eq!(s.record(true, &c, true, false), Some(true));
        assert_eq!(s.record(true, &c, true, true), None);
        assert_eq!(s.record(false, &c, true, true), Some(false));
        // Already down: further failures say nothing new.
        assert_eq!(s.record(false, &c, false, true), None);
        assert_eq!(s.record(true, &c, false, true), Some(true));
    }
}
