//! One config version compiled into an immutable snapshot: the router, each route's policies
//! and action, the upstreams with their pools. Requests read a snapshot and never change it.

use crate::auth::{AuthRegistry, Authorize, ProviderStats, RouteAuth};
use crate::body::ResponseBody;
use crate::config::{ListenerLimits, ValidConfig};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::trace_context::Sampler;
use crate::observe::Sinks;
use crate::policy::header_ops::HeaderOps;
use crate::policy::request_rules::RequestRules;
use crate::policy::rewrite::Rewrite;
use crate::ratelimit::redis::RedisStore;
use crate::ratelimit::{self, Limiter, LimiterRegistry, RouteLimits};
use crate::router::Router;
use crate::tls::TlsSettings;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::split::{Split, SplitKey};
use crate::upstream::{CompiledUpstream, UpstreamRegistry};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl DirectResponse {
    pub fn respond(&self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}

pub enum Action {
    Upstream(usize),
    Split(Split),
    Direct(DirectResponse),
}

pub struct CompiledRoute {
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: Option<Rewrite>,
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub request_rules: RequestRules,
    pub metrics: Arc<RouteMetrics>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rate_limits: RouteLimits,
    pub auth: RouteAuth,
    pub authorize: Option<Authorize>,
    /// Credential headers this route's auth reads: never forwarded upstream.
    pub credential_headers: Vec<HeaderName>,
}

pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub limits: ListenerLimits,
    /// Present on TLS listeners; each accept uses the current snapshot's, so reloads rotate
    /// certificates for new handshakes.
    pub tls: Option<Arc<TlsSettings>>,
}

/// State carried from one snapshot to the next (pools, target state, limiter counters, JWKS
/// caches).
#[derive(Default)]
pub struct Registries {
    pub upstreams: UpstreamRegistry,
    pub limiters: LimiterRegistry,
    pub auth: AuthRegistry,
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
    pub routes: Vec<CompiledRoute>,
    pub upstreams: Vec<CompiledUpstream>,
    pub listeners: Vec<ListenerSpec>,
    pub admin_address: SocketAddr,
    pub admin_token: Option<String>,
    pub allow_encoded_slashes: bool,
    pub drain_timeout: Duration,
    pub trace_context: bool,
    /// Sets the sampled flag of new (and, unless parent-based, continued) traces.
    pub sampler: Sampler,
    /// The access log and span exporter requests are handed to.
    pub sinks: Sinks,
    /// Headers carrying verified claims: removed from every request, authenticated or not.
    pub forwarded_headers: Vec<HeaderName>,
    pub auth_stats: Vec<ProviderStats>,
    /// Every rate limit, by name order (for `/metrics`).
    pub limiters: Vec<Arc<Limiter>>,
    pub redis: Option<Arc<RedisStore>>,
    /// Request metrics are recorded (`observability.metrics.enabled`).
    pub metrics_enabled: bool,
    pub no_route_metrics: Arc<RouteMetrics>,
    /// Response header that carries the trace id, if configured.
    pub trace_id_header: Option<HeaderName>,
    /// The `/admin/routes` document, prepared at load time.
    pub routes_json: serde_json::Value,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&ListenerSpec> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// Compiles a validated config. Pools and target state are taken from `registry` when they
/// still apply.
pub fn compile(
    valid: &ValidConfig,
    version: u64,
    registries: &mut Registries,
    prepared: Prepared,
    metrics: &Metrics,
) -> Snapshot {
    let cfg = &valid.config;
    let Registries {
        upstreams: registry,
        limiters: limiter_registry,
        auth: auth_registry,
    } = registries;
    let Prepared {
        sinks,
        mut tls,
        tls_fingerprint,
    } = prepared;
    registry.set_dns(&cfg.dns);
    let upstreams: Vec<CompiledUpstream> = cfg
        .upstreams
        .iter()
        .map(|u| registry.compile(u, metrics))
        .collect();
    registry.retain(&upstreams);
    let names: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();
    let upstream_index: HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();

    let limiters = limiter_registry.compile(cfg);
    auth_registry.compile(
        cfg,
        limiter_registry.redis(),
        limiter_registry.redis_changed(),
    );
    let routes = cfg
        .routes
        .iter()
        .map(|r| {
            let action = if let Some(u) = &r.upstream {
                Action::Upstream(upstream_index[&*u.value.0])
            } else if let Some(split) = &r.split {
                let entries: Vec<(u32, usize)> = split
                    .iter()
                    .map(|s| (s.weight, upstream_index[&*s.upstream.value.0]))
                    .collect();
                let key = r
                    .split_key
                    .as_ref()
                    .map(|k| SplitKey::parse(k).expect("validated split key"));
                Action::Split(Split::new(&entries, key))
            } else {
                let d = r.direct_response.as_ref().expect("validated: one action");
                let mut headers = HeaderMap::new();
                for (k, v) in &d.headers {
                    headers.insert(
                        HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                        HeaderValue::from_str(v).expect("validated"),
                    );
                }
                Action::Direct(DirectResponse {
                    status: StatusCode::from_u16(d.status).expect("validated status"),
                    body: Bytes::from(d.body.0.clone()),
                    headers,
                })
            };
            let auth = auth_registry.route(
                r.auth
                    .as_ref()
                    .or(cfg.defaults.auth.as_ref())
                    .map(|a| &a.value),
            );
            CompiledRoute {
                name: r.name.value.0.as_str().into(),
                action,
                rewrite: r.rewrite.as_ref().map(|rw| Rewrite::compile(rw)),
                timeout: Duration::from_millis(
                    r.timeout_ms
                        .as_ref()
                        .map_or(cfg.defaults.timeout_ms.value, |t| t.value),
                ),
                retry: r.retries.as_ref().map(|rt| RetryPolicy::compile(rt)),
                request_rules: RequestRules::compile(&r.request, cfg.defaults.max_body_bytes),
                metrics: metrics.route(&r.name.value),
                request_headers: HeaderOps::compile(&r.headers.request),
                response_headers: HeaderOps::compile(&r.headers.response),
                rate_limits: ratelimit::route_limits(
                    &limiters,
                    &cfg.defaults.rate_limits,
                    &r.rate_limits,
                ),
                auth: auth.clone(),
                authorize: Authorize::compile(r.authorization.as_ref().map(|a| &a.value)),
                credential_headers: {
                    let mut h = Vec::new();
                    auth.credential_headers(&mut h);
                    h
                },
            }
        })
        .collect();

    let route_names: Vec<&str> = cfg.routes.iter().map(|r| &*r.name.value.0).collect();
    let upstream_names: Vec<&str> = cfg.upstreams.iter().map(|u| &*u.name.value.0).collect();
    metrics.retain(&route_names, &upstream_names);
    Snapshot {
        version,
        loaded_at: SystemTime::now(),
        checksum: valid.checksum.clone(),
        tls_fingerprint,
        source: valid.source.clone(),
        router: Router::compile(cfg),
        routes,
        upstreams,
        listeners: cfg
            .listeners
            .iter()
            .map(|l| ListenerSpec {
                name: l.name.value.0.clone(),
                address: l.address.parse().expect("validated address"),
                limits: l.limits.clone(),
                tls: tls.remove(&*l.name.value.0),
            })
            .collect(),
        admin_address: cfg.admin.address.parse().expect("validated address"),
        admin_token: cfg.admin.token.as_ref().map(|t| t.0.clone()),
        allow_encoded_slashes: cfg.defaults.allow_encoded_slashes,
        drain_timeout: Duration::from_millis(cfg.defaults.drain_timeout_ms),
        trace_context: cfg.observability.trace_context.enabled,
        sampler: cfg
            .observability
            .otlp
            .as_ref()
            .map_or(Sampler::ALWAYS, |o| {
                Sampler::ratio(o.sample_ratio, o.parent_based)
            }),
        sinks,
        limiters: ratelimit::all(&limiters),
        forwarded_headers: auth_registry.forwarded_headers.clone(),
        auth_stats: auth_registry.stats(),
        redis: limiter_registry.redis().cloned(),
        metrics_enabled: cfg.observability.metrics.enabled,
        no_route_metrics: Arc::clone(&metrics.no_route),
        trace_id_header: cfg
            .observability
            .trace_context
            .response_header
            .as_ref()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("validated header name")),
        routes_json: routes_document(valid),
    }
}

/// Header names whose configured values are secrets and are never shown by the admin API.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "cookie"
        || ["token", "secret", "key", "password", "auth"]
            .iter()
            .any(|s| n.contains(s))
}

fn routes_document(valid: &ValidConfig) -> serde_json::Value {
    let cfg = &valid.config;
    let routes: Vec<serde_json::Value> = cfg
        .routes
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.value).expect("route serialises");
            // Redact configured header values that carry credentials.
            for dir in ["request", "response"] {
                if let Some(set) = v
                    .pointer_mut(&format!("/headers/{dir}/set"))
                    .and_then(|s| s.as_object_mut())
                {
                    for (k, val) in set.iter_mut() {
                        if is_secret_header(k) {
                            *val = serde_json::Value::String("<redacted>".into());
                        }
                    }
                }
            }
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "timeout_ms".into(),
                    serde_json::json!(r
                        .timeout_ms
                        .as_ref()
                        .map_or(cfg.defaults.timeout_ms.value, |t| t.value)),
                );
                obj.retain(|_, val| !val.is_null());
            }
            v
        })
        .collect();
    serde_json::json!({ "routes": routes })
}

pub type SharedSnapshot = Arc<Snapshot>;
