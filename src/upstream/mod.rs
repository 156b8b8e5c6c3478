//! Upstreams: targets with their pools and shared state, balancing, splitting, breakers,
//! bulkheads, retries and health checks.

pub mod balancer;
pub mod breaker;
pub mod dns;
pub mod forward;
pub mod health;
pub mod pool;
pub mod retry;
pub mod split;
pub mod target;

use crate::config::{DnsConfig, HealthCheck, RetryBudgetConfig, Upstream as UpstreamConfig};
use crate::held::Held;
use balancer::{Balancer, HashRing, RoundRobin};
use breaker::BreakerConfig;
use dns::{Dns, ResolvedTarget};
use pool::{PoolSettings, TargetPool};
use retry::RetryBudget;
use split::SplitKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    dns_config: Option<DnsConfig>,
    /// Built on first use by a host-name target; `None` inside if it could not be built.
    dns: Option<Option<Arc<Dns>>>,
}

impl UpstreamRegistry {
    /// Applies the `dns` section; a change rebuilds the resolver and every host-name target.
    pub fn set_dns(&mut self, cfg: &DnsConfig) {
        if self.dns_config.as_ref() != Some(cfg) {
            self.dns_config = Some(cfg.clone());
            self.dns = None;
            self.targets
                .retain(|(_, address), _| address.parse::<std::net::SocketAddr>().is_ok());
        }
    }

    fn resolved(&mut self, address: &str) -> Option<Arc<ResolvedTarget>> {
        if address.parse::<std::net::SocketAddr>().is_ok() {
            return None;
        }
        let (host, port) = address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let cfg = self.dns_config.clone().unwrap_or_default();
        let dns = self.dns.get_or_insert_with(|| match Dns::new(&cfg) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver; host names are resolved by the system at connect time");
                None
            }
        });
        dns.as_ref()
            .map(|d| ResolvedTarget::new(host, port, Arc::clone(d)))
    }

    pub fn compile(
        &mut self,
        u: &UpstreamConfig,
        metrics: &crate::observe::metrics::Metrics,
    ) -> CompiledUpstream {
        let name = u.name.value.0.clone();
        let settings = PoolSettings {
            connect_timeout_ms: u.connect_timeout_ms,
            pool: u.pool.clone(),
            protocol: u.protocol.value,
            tls: u.tls.as_ref().map(|t| t.value.clone()),
        };
        let mut targets: Vec<Target> = Vec::with_capacity(u.targets.len());
        for t in u.targets.iter() {
            let address = t.address.value.0.clone();
            let key = (name.clone(), address.clone());
            let reusable = self
                .targets
                .get(&key)
                .is_some_and(|(pool, _)| *pool.settings() == settings);
            if !reusable {
                let authority = address.parse().expect("validated host:port");
                let pool = TargetPool::new(authority, settings.clone(), self.resolved(&address));
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
                weight: t.weight.value,
            });
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let balancer = match u.load_balancing.value {
            crate::config::LoadBalancing::RoundRobin => {
                Balancer::RoundRobin(RoundRobin::new(&weights))
            }
            crate::config::LoadBalancing::LeastRequest => Balancer::LeastRequest,
            crate::config::LoadBalancing::ConsistentHash => {
                let addrs: Vec<(&str, u32)> = u
                    .targets
                    .iter()
                    .map(|t| (&*t.address.value.0, t.weight.value))
                    .collect();
                Balancer::ConsistentHash {
                    ring: HashRing::new(&addrs),
                    key: SplitKey::parse(u.hash_key.as_ref().expect("validated hash_key"))
                        .expect("validated hash_key"),
                }
            }
        };
        CompiledUpstream {
            runtime: Arc::clone(self.runtimes.entry(name.clone()).or_default()),
            name: name.into(),
            targets,
            balancer,
            breaker: u.circuit_breaker.as_ref().map(|cb| BreakerConfig {
                consecutive_failures: cb.consecutive_failures,
                open: Duration::from_millis(cb.open_ms),
                half_open_requests: cb.half_open_requests,
            }),
            max_concurrent_requests: u.max_concurrent_requests.as_ref().map(|m| m.value),
            retry_budget: u.retry_budget.clone(),
            health_check: u.health_check.as_ref().map(|h| h.value.clone()),
            metrics: metrics.upstream(&u.name.value),
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
