//! Upstreams: compiled targets, balancing, splitting, and pooled connections.

pub mod balancer;
pub mod pool;
pub mod split;

use balancer::RoundRobin;
use pool::TargetPool;
use std::sync::Arc;

/// One upstream in compiled form.
pub struct CompiledUpstream {
    pub name: String,
    /// One pool per target, in file order.
    pub targets: Vec<Arc<TargetPool>>,
    pub balancer: RoundRobin,
}

impl CompiledUpstream {
    /// The next target.
    pub fn pick_target(&self) -> &Arc<TargetPool> {
        &self.targets[self.balancer.pick()]
    }
}
