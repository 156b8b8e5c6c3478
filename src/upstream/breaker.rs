//! Circuit breaker per target (Nygard): closed → open after `consecutive_failures`, or when the
//! failure rate in a sliding window passes `failure_rate.percent` (with at least `min_requests`
//! in the window) → half-open after `open_ms`, letting `half_open_requests` probes through →
//! closed if all succeed, open again on the first failure. The lock is held for a few field
//! updates only, never across I/O.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub open: Duration,
    pub half_open_requests: u32,
    pub failure_rate: Option<FailureRate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRate {
    pub percent: u32,
    pub min_requests: u32,
    pub window: Duration,
}

/// Buckets of the sliding window (each a tenth of it).
const RATE_BUCKETS: usize = 10;

/// Requests and failures per bucket of the window, by bucket number (time ÷ bucket width).
#[derive(Debug, Default)]
struct RateWindow {
    buckets: [(u64, u32, u32); RATE_BUCKETS],
}

impl RateWindow {
    /// Counts one result; returns (requests, failures) over the window.
    fn record(
        &mut self,
        fr: &FailureRate,
        since: Instant,
        now: Instant,
        failed: bool,
    ) -> (u32, u32) {
        let width = (fr.window.as_millis() as u64 / RATE_BUCKETS as u64).max(1);
        let n = now.duration_since(since).as_millis() as u64 / width;
        let slot = &mut self.buckets[(n % RATE_BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u32::from(failed);
        self.buckets
            .iter()
            .filter(|(b, _, _)| n.saturating_sub(*b) < RATE_BUCKETS as u64)
            .fold((0, 0), |(t, f), (_, bt, bf)| (t + bt, f + bf))
    }
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
    /// Results while closed, for `failure_rate`.
    window: RateWindow,
    /// Origin of the window's bucket numbers.
    epoch: Instant,
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
                window: RateWindow::default(),
                epoch: Instant::now(),
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
            BreakerState::Closed => {
                self.failures = 0;
                self.window = RateWindow::default();
            }
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
                        return;
                    }
                }
                if let Some(fr) = &cfg.failure_rate {
                    let epoch = g.epoch;
                    let (requests, failures) = g.window.record(fr, epoch, now, !success);
                    if requests >= fr.min_requests
                        && u64::from(failures) * 100 >= u64::from(fr.percent) * u64::from(requests)
                    {
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
            failure_rate: None,
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

    #[test]
    fn a_failure_rate_opens_without_consecutive_failures() {
        let cfg = BreakerConfig {
            consecutive_failures: 5,
            open: Duration::from_millis(100),
            half_open_requests: 1,
            failure_rate: Some(FailureRate {
                percent: 50,
                min_requests: 10,
                window: Duration::from_secs(10),
            }),
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        // 60% failures, never five in a row: 9 results are below min_requests…
        let pattern = [false, true, false, true, false];
        for i in 0..9 {
            b.record(&cfg, Admission::Allowed, pattern[i % 5], t0);
        }
        assert_eq!(b.status(&cfg, t0).state, BreakerState::Closed);
        // …the tenth makes 6 failures of 10.
        b.record(&cfg, Admission::Allowed, pattern[9 % 5], t0);
        assert_eq!(b.status(&cfg, t0).state, BreakerState::Open);

        // Results older than the window no longer count: 8 failures of 9 at t0 (never 5 in a
        // row, below min_requests), then 4 of 10 later — 40% in the window, 63% with the old.
        let b = Breaker::default();
        for success in [false, false, false, false, true, false, false, false, false] {
            b.record(&cfg, Admission::Allowed, success, t0);
        }
        let later = t0 + Duration::from_secs(11);
        for success in [
            true, false, true, false, true, false, true, true, true, false,
        ] {
            b.record(&cfg, Admission::Allowed, success, later);
        }
        assert_eq!(
            b.status(&cfg, later).state,
            BreakerState::Closed,
            "4 of 10 in the window"
        );
    }
}
