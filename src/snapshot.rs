//! One config version in a running gateway: the compiled config (`crate::compile`) plus the
//! shared state it uses — pools and target state, limiter counters, auth providers, metric
//! series — taken from the registries that carry them across reloads. Assembling a snapshot
//! cannot fail: everything that could was decided when the config was compiled. Requests read
//! a snapshot and never change it.

use crate::auth::{AuthRegistry, ProviderStats, RouteAuth};
use crate::compile::Compiled;
use crate::config::{ListenerLimits, RedisConfig};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::trace_context::Sampler;
use crate::observe::Sinks;
use crate::ratelimit::{self, Limiter, LimiterRegistry, RouteLimits};
use crate::redis_store::{RedisSpec, RedisStore};
use crate::route::RouteRules;
use crate::router::Router;
use crate::tls::TlsSettings;
use crate::upstream::{CompiledUpstream, UpstreamRegistry};
use http::HeaderName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A route as requests see it: its rules plus the shared state they use.
pub struct LiveRoute {
    pub rules: RouteRules,
    pub metrics: Arc<RouteMetrics>,
    pub rate_limits: RouteLimits,
    pub auth: RouteAuth,
    /// Credential headers this route's auth reads: never forwarded upstream.
    pub credential_headers: Vec<HeaderName>,
    /// The route's cache policy and the store it uses.
    pub cache: Option<crate::cache::RouteCache>,
}

/// A listener as the accept loop sees it.
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub limits: ListenerLimits,
    /// Present on TLS listeners; each accept uses the current snapshot's, so reloads rotate
    /// certificates for new handshakes.
    pub tls: Option<Arc<TlsSettings>>,
    pub trusted_proxies: Option<Arc<crate::edge::client_addr::TrustedProxies>>,
    pub proxy_protocol: Option<crate::edge::proxy_protocol::Accept>,
    /// Positions in the snapshot's `edge.ip_rules`.
    pub ip_rules: Vec<usize>,
}

/// The shared Redis connection, kept while the `redis` section does not change.
#[derive(Default)]
pub struct SharedRedis {
    current: Option<(RedisConfig, Arc<RedisStore>)>,
}

impl SharedRedis {
    /// The store for `spec`; the bool says whether it is a new one (state kept in the old
    /// store must then be rebuilt).
    fn apply(&mut self, spec: Option<&RedisSpec>) -> (Option<Arc<RedisStore>>, bool) {
        let changed = match (&self.current, spec) {
            (Some((old, _)), Some(new)) => *old != new.config,
            (None, None) => false,
            _ => true,
        };
        if changed {
            self.current = spec.map(|s| (s.config.clone(), Arc::new(RedisStore::new(s))));
        }
        (self.current.as_ref().map(|(_, s)| Arc::clone(s)), changed)
    }
}

/// State carried from one snapshot to the next (pools, target state, limiter counters, JWKS
/// caches, the Redis connection).
#[derive(Default)]
pub struct Registries {
    pub upstreams: UpstreamRegistry,
    pub limiters: LimiterRegistry,
    pub auth: AuthRegistry,
    pub redis: SharedRedis,
    pub edge: EdgeCounters,
    pub cache: crate::cache::CacheRegistry,
    pub consumers: crate::consumer::ConsumerRegistry,
}

/// Edge rule counters by rule name, carried across reloads.
#[derive(Default)]
pub struct EdgeCounters {
    ip_rules: std::collections::BTreeMap<String, Arc<crate::edge::ip_rules::IpRuleCounters>>,
    rules: std::collections::BTreeMap<String, Arc<crate::edge::rules::RuleCounters>>,
}

/// What is built, fallibly, before a snapshot is compiled: the telemetry sinks and the TLS
/// settings read from their files.
#[derive(Default)]
pub struct Prepared {
    pub sinks: Sinks,
    pub tls: HashMap<String, Arc<TlsSettings>>,
    /// Digest of every certificate and key file read.
    pub tls_fingerprint: String,
}

pub struct Snapshot {
    pub version: u64,
    pub loaded_at: SystemTime,
    pub checksum: String,
    pub tls_fingerprint: String,
    pub source: String,
    pub router: Router,
    pub routes: Vec<LiveRoute>,
    pub upstreams: Vec<CompiledUpstream>,
    pub listeners: Vec<Listener>,
    pub admin_address: SocketAddr,
    pub admin_token: Option<String>,
    /// `admin.dashboard`: whether `/dashboard` is served.
    pub dashboard: bool,
    pub allow_encoded_slashes: bool,
    /// `defaults.cors`, for requests no route matched.
    pub default_cors: Option<Arc<crate::policy::cors::CorsPolicy>>,
    pub drain_timeout: Duration,
    /// On SIGTERM: readiness 503 for this long, still serving, before the listeners close.
    pub drain_delay: Duration,
    pub trace_context: bool,
    /// Sets the sampled flag of new (and, unless parent-based, continued) traces.
    pub sampler: Sampler,
    /// The access log and span exporter requests are handed to.
    pub sinks: Sinks,
    /// Headers carrying verified claims: removed from every request, authenticated or not.
    pub forwarded_headers: Vec<HeaderName>,
    pub auth_stats: Vec<ProviderStats>,
    /// Every rate limit (plans' included), by name order (for `/metrics`).
    pub limiters: Vec<Arc<Limiter>>,
    /// `plans`, compiled (routes with `by_plan` share it).
    pub plans: Option<Arc<ratelimit::plan::PlanTable>>,
    /// `consumers` and the consumer store.
    pub consumers: Arc<crate::consumer::Consumers>,
    /// `tenants`: records, the status source, the forwarded header.
    pub tenants: Arc<crate::tenant::Tenants>,
    pub redis: Option<Arc<RedisStore>>,
    /// Request metrics are recorded (`observability.metrics.enabled`).
    pub metrics_enabled: bool,
    pub no_route_metrics: Arc<RouteMetrics>,
    /// Response header that carries the trace id, if configured.
    pub trace_id_header: Option<HeaderName>,
    /// `observability.instance_header` with this instance's id.
    pub instance_header: Option<(HeaderName, http::HeaderValue)>,
    /// The `/admin/routes` document, prepared at load time.
    pub routes_json: serde_json::Value,
    /// `ip_rules` and `edge_rules`, compiled; listeners and routes refer to them by position.
    pub edge: crate::edge::EdgeSpec,
    /// The response cache's settings and stores.
    pub cache: Arc<crate::cache::CacheRuntime>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// Assembles the snapshot of a compiled config. Pools, target state, limiters and providers
/// are taken from `registries` when they still apply.
pub fn assemble(
    compiled: Compiled,
    version: u64,
    registries: &mut Registries,
    prepared: Prepared,
    metrics: &Metrics,
) -> Snapshot {
    let Registries {
        upstreams: upstream_registry,
        limiters: limiter_registry,
        auth: auth_registry,
        redis: shared_redis,
        edge: edge_counters,
        cache: cache_registry,
        consumers: consumer_registry,
    } = registries;
    let Prepared {
        sinks,
        mut tls,
        tls_fingerprint,
    } = prepared;
    let Compiled {
        source,
        checksum,
        listeners,
        admin,
        dns,
        upstreams,
        auth,
        rate_limits,
        plans,
        consumers,
        tenants,
        redis,
        observe,
        defaults,
        mut edge,
        router,
        routes,
        cache,
        routes_json,
        warnings,
    } = compiled;
    for w in &warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    edge.ip_rules.carry_counters(&edge_counters.ip_rules);
    edge.rules.carry_counters(&edge_counters.rules);
    edge_counters.ip_rules = edge.ip_rules.counters();
    edge_counters.rules = edge.rules.counter_map();

    upstream_registry.set_dns(&dns);
    let upstreams: Vec<CompiledUpstream> = upstreams
        .iter()
        .map(|u| upstream_registry.compile(u, metrics))
        .collect();
    upstream_registry.retain(&upstreams);

    let (redis, redis_changed) = shared_redis.apply(redis.as_ref());
    let cache = cache_registry.compile(&cache, redis.as_ref(), redis_changed);
    let all_limits: Vec<_> = rate_limits
        .limits
        .iter()
        .chain(plans.all_limits())
        .cloned()
        .collect();
    let mut limiters = limiter_registry.compile(&all_limits, redis.as_ref(), redis_changed);
    let plan_limiters = limiters.split_off(rate_limits.limits.len());
    let plan_table = (!plans.plans.is_empty())
        .then(|| Arc::new(ratelimit::plan::PlanTable::new(&plans, &plan_limiters)));
    let consumers = Arc::new(consumer_registry.compile(&consumers, redis.as_ref(), redis_changed));
    let tenants = Arc::new(crate::tenant::Tenants::new(tenants, redis.as_ref()));
    let mtls_listener = listeners
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()));
    auth_registry.compile(
        &auth,
        mtls_listener,
        redis.as_ref(),
        redis_changed,
        consumers.store.as_ref(),
    );

    let route_names: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();
    metrics.retain(&route_names, &upstream_names);
    let routes: Vec<LiveRoute> = routes
        .into_iter()
        .map(|rules| {
            let auth = auth_registry.route(&rules.auth);
            let mut credential_headers = Vec::new();
            auth.credential_headers(&mut credential_headers);
            LiveRoute {
                metrics: metrics.route(&rules.name),
                rate_limits: ratelimit::route_limits(
                    &limiters,
                    &rate_limits.defaults,
                    &rules.rate_limits,
                    plan_table.as_ref().filter(|_| rules.by_plan),
                ),
                auth,
                credential_headers,
                cache: rules
                    .cache
                    .as_ref()
                    .map(|p| cache_registry.route(&rules.name, p, &cache)),
                rules,
            }
        })
        .collect();

    Snapshot {
        version,
        loaded_at: SystemTime::now(),
        checksum,
        tls_fingerprint,
        source,
        router,
        routes,
        upstreams,
        listeners: listeners
            .into_iter()
            .map(|l| Listener {
                tls: tls.remove(&l.name),
                name: l.name,
                address: l.address,
                limits: l.limits,
                trusted_proxies: l.trusted_proxies,
                proxy_protocol: l.proxy_protocol,
                ip_rules: l.ip_rules,
            })
            .collect(),
        admin_address: admin.address,
        admin_token: admin.token,
        dashboard: admin.dashboard,
        allow_encoded_slashes: defaults.allow_encoded_slashes,
        default_cors: defaults.cors.clone(),
        drain_timeout: defaults.drain_timeout,
        drain_delay: defaults.drain_delay,
        trace_context: observe.trace_context,
        sampler: observe.sampler,
        sinks,
        limiters: ratelimit::by_name(&[limiters, plan_limiters].concat()),
        plans: plan_table,
        consumers,
        tenants,
        forwarded_headers: auth_registry.forwarded_headers.clone(),
        auth_stats: auth_registry.stats(),
        redis,
        metrics_enabled: observe.metrics_enabled,
        no_route_metrics: Arc::clone(&metrics.no_route),
        trace_id_header: observe.trace_id_header,
        instance_header: observe.instance_header,
        routes_json,
        edge,
        cache,
    }
}

pub type SharedSnapshot = Arc<Snapshot>;
