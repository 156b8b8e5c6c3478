//! Circuit breaker per target (Nygard): closed → open after `consecutive_failures` → half-open
//! after `open_ms`, letting `half_open_requests` probes through → closed if all succeed, open
//! again on the first failure. The lock is held for a few field updates only, never across I/O.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub open: Duration,
    pub half_open_requests: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A breaker as the admin API reports it.
#[derive(Debug, Clone, Copy)]
pub struct BreakerStatus {
    pub state: BreakerState,
    pub transitions: u64,
    pub changed_at: Option<Instant>,
}

/// What the breaker said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// A half-open probe: its result decides the state.
    Probe,
    Rejected,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
    transitions: u64,
    /// When the state last changed (`None`: closed since start).
    changed_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                probes_in_flight: 0,
                probe_successes: 0,
                transitions: 0,
                changed_at: None,
            }),
        }
    }
}

impl Inner {
    fn go(&mut self, to: BreakerState, now: Instant) {
        if self.state != to {
            self.transitions += 1;
            self.changed_at = Some(now);
            tracing::info!(
                from = self.state.as_str(),
                to = to.as_str(),
                "circuit breaker state change"
            );
        }
        self.state = to;
        match to {
            BreakerState::Open => self.opened_at = Some(now),
            BreakerState::HalfOpen => {
                self.probes_in_flight = 0;
                self.probe_successes = 0;
            }
            BreakerState::Closed => self.failures = 0,
        }
    }

    /// Moves an expired open state to half-open.
    fn refresh(&mut self, cfg: &BreakerConfig, now: Instant) {
        if self.state == BreakerState::Open
            && self
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= cfg.open)
        {
            self.go(BreakerState::HalfOpen, now);
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request would be let through now (without taking a probe slot).
    pub fn would_admit(&self, cfg: &BreakerConfig, now: Instant) -> bool {
        let mut g = self.lock();
        g.refresh(cfg, now);
        match g.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                g.probes_in_flight + g.probe_successes < cfg.half_open_requests
            }
        }
    }

    pub fn admit(&self, cfg: &BreakerConfig, now: Instant) -> Admission {
        let mut g = self.lock();
        g.refresh(cfg, now);
        match g.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => Admission::Rejected,
            BreakerState::HalfOpen => {
                if g.probes_in_flight + g.probe_successes < cfg.half_open_requests {
                    g.probes_in_flight += 1;
                    Admission::Probe
                } else {
                    Admission::Rejected
                }
            }
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, cfg: &BreakerConfig, admission: Admission, success: bool, now: Instant) {
        let mut g = self.lock();
        match (admission, g.state) {
            (Admission::Probe, BreakerState::HalfOpen) => {
                g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
                if success {
                    g.probe_successes += 1;
                    if g.probe_successes >= cfg.half_open_requests {
                        g.go(BreakerState::Closed, now);
                    }
                } else {
                    g.go(BreakerState::Open, now);
                }
            }
            (Admission::Allowed, BreakerState::Closed) => {
                if success {
                    g.failures = 0;
                } else {
                    g.failures += 1;
                    if g.failures >= cfg.consecutive_failures {
                        g.go(BreakerState::Open, now);
                    }
                }
            }
            // Results of requests admitted under an earlier state do not move the breaker.
            _ => {}
        }
    }

    /// The state, how often it changed and when it last did.
    pub fn status(&self, cfg: &BreakerConfig, now: Instant) -> BreakerStatus {
        let mut g = self.lock();
        g.refresh(cfg, now);
        BreakerStatus {
            state: g.state,
            transitions: g.transitions,
            changed_at: g.changed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_cycle() {
        let cfg = BreakerConfig {
            consecutive_failures: 3,
            open: Duration::from_millis(100),
            half_open_requests: 2,
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            let a = b.admit(&cfg, t0);
            b.record(&cfg, a, false, t0);
        }
        assert_eq!(b.status(&cfg, t0).state, BreakerState::Closed);
        // A success resets the count.
        b.record(&cfg, Admission::Allowed, true, t0);
        for _ in 0..3 {
            let a = b.admit(&cfg, t0);
            b.record(&cfg, a, false, t0);
        }
        assert_eq!(b.status(&cfg, t0).state, BreakerState::Open);
        assert_eq!(
            b.admit(&cfg, t0 + Duration::from_millis(50)),
            Admission::Rejected
        );
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(&cfg, t1), Admission::Probe);
        assert_eq!(b.admit(&cfg, t1), Admission::Probe);
        assert_eq!(
            b.admit(&cfg, t1),
            Admission::Rejected,
            "only half_open_requests probes"
        );
        b.record(&cfg, Admission::Probe, true, t1);
        assert_eq!(b.status(&cfg, t1).state, BreakerState::HalfOpen);
        b.record(&cfg, Admission::Probe, true, t1);
        assert_eq!(b.status(&cfg, t1).state, BreakerState::Closed);
        // Re-open on a failed probe.
        for _ in 0..3 {
            b.record(&cfg, Admission::Allowed, false, t1);
        }
        let t2 = t1 + Duration::from_millis(100);
        let probe = b.admit(&cfg, t2);
        assert_eq!(probe, Admission::Probe);
        b.record(&cfg, probe, false, t2);
        assert_eq!(b.status(&cfg, t2).state, BreakerState::Open);
        assert_eq!(
            b.status(&cfg, t2).transitions,
            6,
            "closed→open→half→closed→open→half→open"
        );
    }
}
