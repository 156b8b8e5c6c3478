//! One unit of a shared count (requests in flight, bulkhead slots), held until dropped, so a
//! request that ends early (error, cancelled future) always gives its unit back.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    /// Counts one more, unconditionally.
    pub fn take(counter: &'a AtomicU64) -> Held<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        Held(counter)
    }

    /// Counts one more unless `limit` units are already held.
    pub fn take_within(counter: &'a AtomicU64, limit: u64) -> Option<Held<'a>> {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let held = Held(counter);
        // Over the limit, ours is given back as `held` drops.
        (before < limit).then_some(held)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
