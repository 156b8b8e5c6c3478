//! Choosing a target: smooth weighted round robin, least request (power of two choices), or
//! consistent hashing on a ring. Unavailable targets (unhealthy, breaker open) and the target a
//! retry just failed on are skipped.

use super::split::{murmur3_x86_32, SplitKey};
use super::target::Target;
use crate::upstream::breaker::BreakerConfig;
use http::HeaderMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

/// What a pick may look at in the request.
pub struct PickContext<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: &'a str,
    pub breaker: Option<&'a BreakerConfig>,
    pub now: Instant,
    /// Targets already tried by this request; avoided while another is available.
    pub tried: &'a [usize],
}

impl PickContext<'_> {
    fn usable(&self, targets: &[Target], i: usize, avoid_tried: bool) -> bool {
        (!avoid_tried || !self.tried.contains(&i)) && targets[i].available(self.breaker, self.now)
    }
}

pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest,
    ConsistentHash { ring: HashRing, key: SplitKey },
}

impl Balancer {
    /// The index of the target for this request, or `None` when every target is unavailable.
    pub fn pick(&self, targets: &[Target], cx: &PickContext) -> Option<usize> {
        // First avoid targets this request already tried; if that leaves none, allow them.
        [true, false].into_iter().find_map(|avoid| match self {
            Balancer::RoundRobin(rr) => rr.pick_where(|i| cx.usable(targets, i, avoid)),
            Balancer::LeastRequest => least_request(targets, |i| cx.usable(targets, i, avoid)),
            Balancer::ConsistentHash { ring, key } => {
                let hash = match key.extract(cx.headers, cx.client_ip) {
                    Some(k) => murmur3_x86_32(k, 0),
                    None => fastrand::u32(..),
                };
                ring.pick_where(hash, |i| cx.usable(targets, i, avoid))
            }
        })
    }
}

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<usize>,
    next: AtomicUsize,
}

/// Longest schedule kept; heavier weight sets are scaled down to fit (keeping their ratios to
/// within 1/SCHEDULE_MAX).
const SCHEDULE_MAX: u64 = 4096;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl RoundRobin {
    /// Smooth weighted round robin (the nginx algorithm), precomputed into a schedule at config
    /// load so that a pick is one atomic increment.
    pub fn new(weights: &[u32]) -> RoundRobin {
        let g = weights
            .iter()
            .fold(0u64, |g, w| gcd(g, u64::from(*w)))
            .max(1);
        let mut w: Vec<u64> = weights.iter().map(|x| u64::from(*x) / g).collect();
        let total: u64 = w.iter().sum();
        if total > SCHEDULE_MAX {
            for x in &mut w {
                *x = (*x * SCHEDULE_MAX / total).max(1);
            }
        }
        let total: u64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, wi) in current.iter_mut().zip(&w) {
                *c += *wi as i64;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
                .expect("at least one target");
            current[best] -= total as i64;
            schedule.push(best);
        }
        RoundRobin {
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The next target in the schedule that satisfies `ok`.
    pub fn pick_where(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.schedule.len())
            .map(|k| self.schedule[(start + k) % self.schedule.len()])
            .find(|i| ok(*i))
    }
}

/// Power of two choices: two random usable targets, the one with fewer requests in flight
/// (relative to its weight) wins.
fn least_request(targets: &[Target], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let usable: Vec<usize> = (0..targets.len()).filter(|i| ok(*i)).collect();
    match usable.len() {
        0 => None,
        1 => Some(usable[0]),
        n => {
            let a = usable[fastrand::usize(..n)];
            let mut b = usable[fastrand::usize(..n - 1)];
            if b == a {
                b = usable[n - 1];
            }
            let load = |i: usize| {
                let t = &targets[i];
                t.state.in_flight.load(Ordering::Relaxed) as f64 / f64::from(t.weight.max(1))
            };
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// A consistent-hash ring: each target owns `VNODES × weight` points, so adding or removing one
/// of N targets moves about 1/N of the keys.
#[derive(Debug)]
pub struct HashRing {
    points: Vec<(u32, usize)>,
}

const VNODES: u32 = 160;

impl HashRing {
    /// `targets` are (address, weight) in file order.
    pub fn new(targets: &[(&str, u32)]) -> HashRing {
        let mut points = Vec::new();
        for (i, (addr, weight)) in targets.iter().enumerate() {
            for v in 0..VNODES * weight.max(&1) {
                points.push((murmur3_x86_32(format!("{addr}#{v}").as_bytes(), 0), i));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// The owner of `hash`, walking clockwise past targets that fail `ok`.
    pub fn pick_where(&self, hash: u32, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(p, _)| *p < hash);
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1)
            .find(|i| ok(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_and_weighted() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).filter_map(|_| rr.pick_where(|_| true)).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 1]);
        assert_eq!(
            (0..4)
                .filter_map(|_| rr.pick_where(|_| true))
                .collect::<Vec<_>>(),
            vec![0, 1, 0, 1]
        );
    }

    #[test]
    fn heavy_weights_are_scaled() {
        let rr = RoundRobin::new(&[10_000, 9_999, 1]);
        assert!(rr.schedule.len() as u64 <= SCHEDULE_MAX + 3);
        assert!(rr.schedule.contains(&2));
    }

    #[test]
    fn round_robin_skips_unusable() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_ne!(rr.pick_where(|i| i != 1), Some(1));
        }
        assert_eq!(rr.pick_where(|_| false), None);
    }

    #[test]
    fn ring_moves_about_one_fifth_of_keys_to_a_fifth_target_and_nothing_else() {
        let four = HashRing::new(&[
            ("10.0.0.1:80", 1),
            ("10.0.0.2:80", 1),
            ("10.0.0.3:80", 1),
            ("10.0.0.4:80", 1),
        ]);
        let five = HashRing::new(&[
            ("10.0.0.1:80", 1),
            ("10.0.0.2:80", 1),
            ("10.0.0.3:80", 1),
            ("10.0.0.4:80", 1),
            ("10.0.0.5:80", 1),
        ]);
        let keys = 20_000;
        let (mut moved, mut moved_elsewhere) = (0, 0);
        for k in 0..keys {
            let h = murmur3_x86_32(format!("user-{k}").as_bytes(), 0);
            let a = four.pick_where(h, |_| true).unwrap();
            let b = five.pick_where(h, |_| true).unwrap();
            if a != b {
                moved += 1;
                if b != 4 {
                    moved_elsewhere += 1;
                }
            }
        }
        assert_eq!(moved_elsewhere, 0, "keys moved between old targets");
        let share = f64::from(moved) / f64::from(keys);
        assert!(
            (0.15..=0.25).contains(&share),
            "{share} of keys moved to the new target"
        );
    }
}
