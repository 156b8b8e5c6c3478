//! Upstreams: compiled targets, balancing, splitting, and pooled clients.

pub mod balancer;
pub mod pool;
pub mod split;

use balancer::RoundRobin;
use pool::UpstreamClient;

/// One upstream in compiled form.
pub struct CompiledUpstream {
    pub name: String,
    /// `host:port` of each target, in file order.
    pub targets: Vec<String>,
    pub balancer: RoundRobin,
    pub client: UpstreamClient,
}

impl CompiledUpstream {
    /// The next target's `host:port`.
    pub fn pick_target(&self) -> &str {
        &self.targets[self.balancer.pick()]
    }
}
