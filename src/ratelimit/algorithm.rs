//! The two limit algorithms as pure arithmetic on a small state, in microseconds. The local
//! store runs them directly; the Redis store runs the same arithmetic in a Lua script and hands
//! the resulting state back here, so both stores report identical numbers.

use super::calendar::Period;

const MICROS: u64 = 1_000_000;

/// A limit's parameters, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// GCRA: one stored number, the theoretical arrival time (TAT) of the next request.
    TokenBucket {
        capacity: u64,
        /// Microseconds per token.
        interval_us: u64,
    },
    /// Weighted two-window counter: `current + previous × (window − elapsed) / window`.
    SlidingWindow { limit: u64, window_us: u64 },
    /// `limit` requests per calendar window (hour, day, month in a time zone), on the wall
    /// clock. State: `Window { index: window start (Unix s), current, previous: 0 }`.
    Quota { limit: u64, period: Period },
}

/// Stored per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Theoretical arrival time (µs on the store's clock).
    Tat(u64),
    Window {
        /// Window number (`now / window`).
        index: u64,
        // u32: limits are at most 10^9 (validated); keeps an entry at 24 bytes.
        current: u32,
        previous: u32,
    },
}

/// What a decision says, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests still admitted right now after this one.
    pub remaining: u64,
    /// Seconds until more quota is available (draft-ietf-httpapi-ratelimit-headers-10 `t`):
    /// the earliest time at which one request more than `remaining` would be admitted, rounded
    /// up so a client that waits this long is admitted. On a refusal that is when the refused
    /// request would be (at least 1); 0 when the quota is full.
    pub reset_s: u64,
}

fn ceil_s(us: u64) -> u64 {
    us.div_ceil(MICROS)
}

/// `reset_s` from the wait for more quota: 0 when the quota is full, at least 1 on a refusal.
fn settle(allowed: bool, full: bool, wait_us: u64) -> u64 {
    match (allowed, full) {
        (true, true) => 0,
        (true, false) => ceil_s(wait_us),
        (false, _) => ceil_s(wait_us).max(1),
    }
}

impl Algorithm {
    /// `capacity` tokens, refilled at `per_second` (both checked by the limit's builder).
    pub fn token_bucket(capacity: u64, per_second: f64) -> Algorithm {
        Algorithm::TokenBucket {
            capacity: capacity.max(1),
            interval_us: ((MICROS as f64 / per_second).round() as u64).max(1),
        }
    }

    /// `limit` requests per `window_s` seconds.
    pub fn sliding_window(limit: u64, window_s: u64) -> Algorithm {
        Algorithm::SlidingWindow {
            limit: limit.max(1),
            window_us: window_s.max(1) * MICROS,
        }
    }

    /// The quota and window advertised in `RateLimit-Policy` (`q`, `w` in seconds).
    pub fn policy(&self) -> (u64, u64) {
        match *self {
            Algorithm::TokenBucket {
                capacity,
                interval_us,
            } => (capacity, ceil_s(capacity * interval_us).max(1)),
            Algorithm::SlidingWindow { limit, window_us } => (limit, window_us / MICROS),
            Algorithm::Quota { limit, period } => (limit, period.nominal_s()),
        }
    }

    /// A quota over `period`: `limit` requests per window.
    pub fn quota(limit: u64, period: Period) -> Algorithm {
        Algorithm::Quota {
            limit: limit.max(1),
            period,
        }
    }

    /// "Now" for this algorithm, in µs: the wall clock for calendar quotas, the monotonic one
    /// for the others (immune to clock steps).
    pub fn now_us(&self) -> u64 {
        match self {
            Algorithm::Quota { .. } => super::calendar::wall_us(),
            _ => super::local::now_us(),
        }
    }

    /// The outcome of a quota decision: `used` requests counted in the window (this one
    /// included when allowed), `end_s` the window's end.
    pub fn quota_outcome(&self, allowed: bool, used: u64, now_us: u64, end_s: i64) -> Outcome {
        let limit = match *self {
            Algorithm::Quota { limit, .. } => limit,
            _ => unreachable!("quota only"),
        };
        let remaining = limit.saturating_sub(used);
        let wait_us = (end_s.max(0) as u64 * MICROS).saturating_sub(now_us);
        Outcome {
            allowed,
            remaining,
            reset_s: settle(allowed, remaining >= limit, wait_us),
        }
    }

    /// Decides one request at `now` against `state` (None: never seen or forgotten) and
    /// returns the state to store (unchanged when refused).
    pub fn decide(&self, state: Option<State>, now: u64) -> (Outcome, State) {
        match *self {
            Algorithm::TokenBucket {
                capacity,
                interval_us,
            } => {
                let tat = match state {
                    Some(State::Tat(t)) => t.max(now),
                    _ => now,
                };
                let burst = capacity * interval_us;
                let next = tat + interval_us;
                let allowed = next - now <= burst;
                let stored = if allowed { next } else { tat };
                (self.gcra_outcome(allowed, stored - now), State::Tat(stored))
            }
            Algorithm::SlidingWindow { window_us, .. } => {
                let index = now / window_us;
                let (current, previous) = match state {
                    Some(State::Window {
                        index: i,
                        current,
                        previous,
                    }) if i == index => (u64::from(current), u64::from(previous)),
                    // The window moved on by one: its count now weighs as the previous one.
                    Some(State::Window {
                        index: i, current, ..
                    }) if i + 1 == index => (0, u64::from(current)),
                    _ => (0, 0),
                };
                let elapsed = now - index * window_us;
                let allowed = self.window_admits(current, previous, elapsed);
                let current = current + u64::from(allowed);
                (
                    self.window_outcome(allowed, current, previous, elapsed),
                    State::Window {
                        index,
                        current: current as u32,
                        previous: previous as u32,
                    },
                )
            }
            Algorithm::Quota { limit, period } => {
                let window = period.window_at((now / MICROS) as i64);
                let index = window.start_s.max(0) as u64;
                let used = match state {
                    Some(State::Window {
                        index: i, current, ..
                    }) if i == index => u64::from(current),
                    _ => 0,
                };
                let allowed = used < limit;
                let used = used + u64::from(allowed);
                (
                    self.quota_outcome(allowed, used, now, window.end_s),
                    State::Window {
                        index,
                        current: used as u32,
                        previous: 0,
                    },
                )
            }
        }
    }

    /// The outcome of a GCRA decision from `ahead`: the stored TAT minus now.
    pub fn gcra_outcome(&self, allowed: bool, ahead: u64) -> Outcome {
        let Algorithm::TokenBucket {
            capacity,
            interval_us,
        } = *self
        else {
            unreachable!("token bucket only")
        };
        let burst = capacity * interval_us;
        let remaining = burst.saturating_sub(ahead) / interval_us;
        // One more request fits once the TAT has come down to burst − (remaining + 1) intervals.
        let wait_us = (ahead + (remaining + 1) * interval_us).saturating_sub(burst);
        Outcome {
            allowed,
            remaining,
            reset_s: settle(allowed, remaining >= capacity, wait_us),
        }
    }

    /// Whether one more request fits: `current + previous × (window − elapsed)/window + 1 ≤
    /// limit`, in integers.
    fn window_admits(&self, current: u64, previous: u64, elapsed: u64) -> bool {
        let Algorithm::SlidingWindow { limit, window_us } = *self else {
            unreachable!("sliding window only")
        };
        let w = u128::from(window_us);
        u128::from(current + 1) * w + u128::from(previous) * (w - u128::from(elapsed))
            <= u128::from(limit) * w
    }

    /// The outcome of a sliding-window decision, `current` already counting this request when
    /// allowed.
    pub fn window_outcome(
        &self,
        allowed: bool,
        current: u64,
        previous: u64,
        elapsed: u64,
    ) -> Outcome {
        let Algorithm::SlidingWindow { limit, window_us } = *self else {
            unreachable!("sliding window only")
        };
        let w = u128::from(window_us);
        let used = u128::from(current) * w + u128::from(previous) * (w - u128::from(elapsed));
        let remaining = ((u128::from(limit) * w).saturating_sub(used) / w) as u64;
        // Wait until `need` requests fit, with nothing more arriving: the previous window's
        // weight decays through this window; after its end, this window's count decays.
        let need = remaining + 1;
        let to_window_end = window_us - elapsed;
        let wait_us = if need + current <= limit && previous > 0 {
            // previous × (w − e)/w ≤ limit − need − current, within this window.
            let room = u128::from(limit - need - current);
            let e_needed = w - (room * w) / u128::from(previous);
            (e_needed as u64).saturating_sub(elapsed)
        } else if need + current <= limit {
            0
        } else {
            // In the next window current weighs as previous: current × (w − e)/w ≤ limit − need.
            let room = u128::from(limit.saturating_sub(need));
            let e_needed = if current == 0 {
                0
            } else {
                w.saturating_sub((room * w) / u128::from(current))
            };
            to_window_end + e_needed as u64
        };
        Outcome {
            allowed,
            remaining,
            reset_s: settle(allowed, remaining >= limit, wait_us),
        }
    }

    /// The state after giving one request back (a later limit refused it).
    pub fn refund(&self, state: State) -> State {
        match (*self, state) {
            (Algorithm::TokenBucket { interval_us, .. }, State::Tat(t)) => {
                State::Tat(t.saturating_sub(interval_us))
            }
            (
                _,
                State::Window {
                    index,
                    current,
                    previous,
                },
            ) => State::Window {
                index,
                current: current.saturating_sub(1),
                previous,
            },
            (_, s) => s,
        }
    }

    /// When a stored state becomes equivalent to no state at all (µs): from then on it can be
    /// forgotten without changing any decision.
    pub fn fresh_at(&self, state: &State) -> u64 {
        match (*self, state) {
            (_, State::Tat(t)) => *t,
            (Algorithm::SlidingWindow { window_us, .. }, State::Window { index, .. }) => {
                (index + 2) * window_us
            }
            (Algorithm::Quota { period, .. }, State::Window { index, .. }) => {
                period.window_at(*index as i64).end_s.max(0) as u64 * MICROS
            }
            (_, State::Window { .. }) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = MICROS;

    fn run(a: &Algorithm, state: &mut Option<State>, now: u64) -> Outcome {
        let (o, s) = a.decide(*state, now);
        *state = Some(s);
        o
    }

    #[test]
    fn token_bucket_admits_capacity_then_the_refill_rate_exactly() {
        let a = Algorithm::TokenBucket {
            capacity: 10,
            interval_us: S / 5,
        };
        let mut st = None;
        let t0 = 1_000 * S;
        let first: Vec<Outcome> = (0..11).map(|_| run(&a, &mut st, t0)).collect();
        assert_eq!(first.iter().filter(|o| o.allowed).count(), 10);
        assert_eq!(first[0].remaining, 9);
        assert_eq!(first[9].remaining, 0);
        assert!(!first[10].allowed);
        assert_eq!(first[10].reset_s, 1, "next token in 0.2 s, rounded up");
        assert_eq!(first[0].reset_s, 1, "more quota in 0.2 s");
        // Then exactly 5 per second, second after second.
        for sec in 1..=5 {
            let now = t0 + sec * S;
            let admitted = (0..20).filter(|_| run(&a, &mut st, now).allowed).count();
            assert_eq!(admitted, 5, "second {sec}");
        }
        // Half a second: 2 tokens (2.5 rounded down).
        let admitted = (0..20)
            .filter(|_| run(&a, &mut st, t0 + 5 * S + S / 2).allowed)
            .count();
        assert_eq!(admitted, 2);
        // Idle long enough: full again, never more than capacity.
        let admitted = (0..20)
            .filter(|_| run(&a, &mut st, t0 + 100 * S).allowed)
            .count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn sliding_window_never_admits_more_than_the_limit_across_a_boundary_burst() {
        let a = Algorithm::SlidingWindow {
            limit: 100,
            window_us: 10 * S,
        };
        let mut st = None;
        let start = 500 * 10 * S; // a window boundary
                                  // Burst at the very end of one window...
        let end = start + 10 * S - 1;
        let a1 = (0..150).filter(|_| run(&a, &mut st, end).allowed).count();
        assert_eq!(a1, 100);
        // ...and at the very start of the next: the previous window still weighs ~100%.
        let a2 = (0..150)
            .filter(|_| run(&a, &mut st, start + 10 * S).allowed)
            .count();
        assert_eq!(a2, 0);
        // Half-way through, half of the previous count has decayed.
        let a3 = (0..150)
            .filter(|_| run(&a, &mut st, start + 15 * S).allowed)
            .count();
        assert_eq!(a3, 50);
        // A client sending as fast as allowed for 40 s gets the limit's rate: ~100 per 10 s.
        let mut st = None;
        let mut admitted = 0;
        for ms in (0..40_000).step_by(50) {
            let now = start + ms * 1000;
            admitted += (0..10).filter(|_| run(&a, &mut st, now).allowed).count();
        }
        assert!((395..=400).contains(&admitted), "{admitted}");
    }

    #[test]
    fn sliding_window_retry_after_is_when_a_request_fits_again() {
        let a = Algorithm::SlidingWindow {
            limit: 10,
            window_us: 10 * S,
        };
        let mut st = None;
        let t0 = 100 * 10 * S;
        for _ in 0..10 {
            assert!(run(&a, &mut st, t0 + S).allowed);
        }
        let refused = run(&a, &mut st, t0 + 2 * S);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // Current full (10): the next window, once 10 × (w − e)/w ≤ 9 → e ≥ 1 s, i.e. 8 + 1 s.
        assert_eq!(refused.reset_s, 9);
        assert!(!run(&a, &mut st, t0 + 10 * S + S / 2).allowed);
        assert!(run(&a, &mut st, t0 + 11 * S).allowed);
    }

    /// `reset_s` is a promise a client can act on: after waiting it, one request more than
    /// `remaining` is admitted; one second earlier it would not have been (it is rounded up, not
    /// padded). Checked after every decision of bursts at many points in time.
    #[test]
    fn waiting_reset_s_is_enough_and_not_more_than_needed() {
        let algorithms = [
            Algorithm::token_bucket(10, 5.0),
            Algorithm::token_bucket(3, 0.5),
            Algorithm::sliding_window(10, 10),
            Algorithm::sliding_window(7, 3),
        ];
        for a in algorithms {
            let mut st = None;
            let base = 1_000 * 30 * S;
            let mut checked = 0;
            for step in 0..400u64 {
                // Bursts of up to 4 requests every 0.37 s, so decisions land all over windows.
                let now = base + step * 370_000;
                for _ in 0..(step % 5) {
                    let before = st;
                    let o = run(&a, &mut st, now);
                    if o.reset_s == 0 {
                        continue;
                    }
                    checked += 1;
                    // With nothing else arriving, `remaining + 1` requests fit after reset_s.
                    let want = o.remaining + 1;
                    let fits = |at: u64| {
                        let mut s = if o.allowed { st } else { before };
                        (0..want).all(|_| run(&a, &mut s, at).allowed)
                    };
                    assert!(fits(now + o.reset_s * S), "{a:?} at {step}: {o:?}");
                    if o.reset_s > 1 {
                        assert!(
                            !fits(now + (o.reset_s - 1) * S),
                            "{a:?} at {step}: {o:?} padded"
                        );
                    }
                }
            }
            assert!(checked > 100, "{a:?}: only {checked} decisions checked");
        }
    }

    #[test]
    fn a_quota_admits_its_limit_per_calendar_window_and_resets_at_the_window_end() {
        use super::super::calendar::{Period, PeriodKind};
        let a = Algorithm::quota(3, Period::new(PeriodKind::Day, "Europe/Berlin").unwrap());
        // 2027-01-10 22:59:00 UTC = 23:59 in Berlin: one minute before the day ends there.
        let t = 1_799_621_940 * S;
        let mut st = None;
        let first = run(&a, &mut st, t);
        assert_eq!(
            (first.allowed, first.remaining, first.reset_s),
            (true, 2, 60)
        );
        assert!(run(&a, &mut st, t).allowed && run(&a, &mut st, t).allowed);
        let refused = run(&a, &mut st, t + 30 * S);
        assert_eq!(
            (refused.allowed, refused.remaining, refused.reset_s),
            (false, 0, 30)
        );
        // Local midnight: a new window.
        assert!(run(&a, &mut st, t + 60 * S).allowed);
        assert_eq!(a.policy(), (3, 86_400));
        // Forgettable once its window has ended.
        let (_, s) = a.decide(None, t);
        assert_eq!(a.fresh_at(&s), t + 60 * S);
        let s = a.refund(a.decide(Some(s), t).1);
        assert_eq!(a.decide(Some(s), t).0.remaining, 1);
    }

    #[test]
    fn refunds_give_one_request_back() {
        let a = Algorithm::TokenBucket {
            capacity: 2,
            interval_us: S,
        };
        let (_, s) = a.decide(None, 10 * S);
        let (_, s) = a.decide(Some(s), 10 * S);
        assert!(!a.decide(Some(s), 10 * S).0.allowed);
        let s = a.refund(s);
        assert!(a.decide(Some(s), 10 * S).0.allowed);
    }

    #[test]
    fn state_is_forgettable_once_fresh() {
        let a = Algorithm::TokenBucket {
            capacity: 3,
            interval_us: S,
        };
        let (_, s) = a.decide(None, 10 * S);
        assert_eq!(a.fresh_at(&s), 11 * S);
        // At that time the stored state and no state decide the same.
        assert_eq!(a.decide(Some(s), 11 * S), a.decide(None, 11 * S));
    }
}
