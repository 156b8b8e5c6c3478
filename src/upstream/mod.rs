//! Upstreams: targets with their pools and shared state, balancing, splitting, breakers,
//! bulkheads, retries and health checks.

pub mod balancer;
pub mod breaker;
pub mod dns;
pub mod fallback;
pub mod forward;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod retry;
pub mod spec;
pub mod split;
pub mod target;

use crate::config::{HealthCheck, RetryBudgetConfig};
use crate::held::Held;
use balancer::{Balancer, HashRing, RoundRobin};
use breaker::BreakerConfig;
use dns::{Dns, DnsSpec, ResolvedTarget};
use pool::TargetPool;
use retry::RetryBudget;
use spec::{BalancingSpec, UpstreamSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use target::{Target, TargetState};

/// Per-upstream state that outlives snapshots: bulkhead occupancy, retry budget, counters.
#[derive(Debug, Default)]
pub struct UpstreamRuntime {
    pub in_flight: AtomicU64,
    pub bulkhead_rejections: AtomicU64,
    pub retries: AtomicU64,
    pub retries_denied_by_budget: AtomicU64,
    pub budget: RetryBudget,
}

/// One upstream in compiled form.
pub struct CompiledUpstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    pub breaker: Option<BreakerConfig>,
    pub max_concurrent_requests: Option<u64>,
    pub retry_budget: RetryBudgetConfig,
    pub health_check: Option<HealthCheck>,
    pub runtime: Arc<UpstreamRuntime>,
    pub metrics: Arc<crate::observe::metrics::UpstreamMetrics>,
}

impl CompiledUpstream {
    /// A bulkhead slot, or `None` when `max_concurrent_requests` are already in flight.
    pub fn enter(&self) -> Option<Held<'_>> {
        let slot = Held::take_within(
            &self.runtime.in_flight,
            self.max_concurrent_requests.unwrap_or(u64::MAX),
        );
        if slot.is_none() {
            self.runtime
                .bulkhead_rejections
                .fetch_add(1, Ordering::Relaxed);
        }
        slot
    }
}

/// Pools and target state by (upstream, target address), and upstream runtimes by name; only
/// the config loader touches it. Reusing them across reloads keeps warm connections, breaker
/// and health state, and retry budgets.
#[derive(Default)]
pub struct UpstreamRegistry {
    targets: HashMap<(String, String), (Arc<TargetPool>, Arc<TargetState>)>,
    runtimes: HashMap<String, Arc<UpstreamRuntime>>,
    dns_config: Option<DnsSpec>,
    /// Built on first use by a host-name target; `None` inside if it could not be built.
    dns: Option<Option<Arc<Dns>>>,
}

impl UpstreamRegistry {
    /// Applies the `dns` section; a change rebuilds the resolver and every host-name target.
    pub fn set_dns(&mut self, cfg: &DnsSpec) {
        if self.dns_config.as_ref() != Some(cfg) {
            self.dns_config = Some(cfg.clone());
            self.dns = None;
            self.targets
                .retain(|(_, address), _| address.parse::<std::net::SocketAddr>().is_ok());
        }
    }

    fn resolved(&mut self, target: &spec::TargetSpec) -> Option<Arc<ResolvedTarget>> {
        if target.address.parse::<std::net::SocketAddr>().is_ok() {
            return None;
        }
        let port = target.authority.port_u16()?;
        let cfg = self.dns_config.clone().unwrap_or_default();
        let dns = self.dns.get_or_insert_with(|| match Dns::new(&cfg) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver; host names are resolved by the system at connect time");
                None
            }
        });
        dns.as_ref()
            .map(|d| ResolvedTarget::new(target.authority.host(), port, Arc::clone(d)))
    }

    pub fn compile(
        &mut self,
        u: &UpstreamSpec,
        metrics: &crate::observe::metrics::Metrics,
    ) -> CompiledUpstream {
        let mut targets: Vec<Target> = Vec::with_capacity(u.targets.len());
        for t in &u.targets {
            let key = (u.name.clone(), t.address.clone());
            let reusable = self
                .targets
                .get(&key)
                .is_some_and(|(pool, _)| *pool.settings() == u.settings);
            if !reusable {
                let pool = TargetPool::new(
                    t.authority.clone(),
                    u.settings.clone(),
                    t.tls.as_ref(),
                    self.resolved(t),
                );
                match self.targets.get_mut(&key) {
                    // New settings: a new pool, but the target keeps its health and breaker.
                    Some(entry) => entry.0 = pool,
                    None => {
                        self.targets
                            .insert(key.clone(), (pool, Arc::new(TargetState::new())));
                    }
                }
            }
            let (pool, state) = &self.targets[&key];
            targets.push(Target {
                pool: Arc::clone(pool),
                state: Arc::clone(state),
                weight: t.weight,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let balancer = match &u.balancing {
            BalancingSpec::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            BalancingSpec::LeastRequest => Balancer::LeastRequest,
            BalancingSpec::ConsistentHash(key) => {
                let addrs: Vec<(&str, u32)> = u
                    .targets
                    .iter()
                    .map(|t| (t.address.as_str(), t.weight))
                    .collect();
                Balancer::ConsistentHash {
                    ring: HashRing::new(&addrs),
                    key: key.clone(),
                }
            }
        };
        CompiledUpstream {
            runtime: Arc::clone(self.runtimes.entry(u.name.clone()).or_default()),
            name: u.name.as_str().into(),
            targets,
            balancer,
            breaker: u.breaker.clone(),
            max_concurrent_requests: u.max_concurrent_requests,
            retry_budget: u.retry_budget.clone(),
            health_check: u.health_check.clone(),
            metrics: metrics.upstream(&u.name),
        }
    }

    /// Forgets what the latest config no longer uses (older snapshots keep theirs alive until
    /// their last request ends).
    pub fn retain(&mut self, upstreams: &[CompiledUpstream]) {
        self.targets.retain(|_, (pool, _)| {
            upstreams
                .iter()
                .any(|u| u.targets.iter().any(|t| Arc::ptr_eq(&t.pool, pool)))
        });
        self.runtimes
            .retain(|name, _| upstreams.iter().any(|u| *u.name == **name));
    }
}
