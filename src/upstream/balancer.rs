//! Smooth weighted round robin (the nginx algorithm), precomputed into a schedule at config
//! load so that picking a target is one atomic increment: no lock on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Index of the next target.
    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.schedule[n % self.schedule.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_and_weighted() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 1]);
        assert_eq!(
            (0..4).map(|_| rr.pick()).collect::<Vec<_>>(),
            vec![0, 1, 0, 1]
        );
    }

    #[test]
    fn heavy_weights_are_scaled() {
        let rr = RoundRobin::new(&[10_000, 9_999, 1]);
        assert!(rr.schedule.len() as u64 <= SCHEDULE_MAX + 3);
        assert!(rr.schedule.contains(&2));
    }
}
