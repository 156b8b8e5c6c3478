//! The response cache: an RFC 9111 shared cache in front of a route's upstream.
//!
//! It owns two config sections — `cache` (the store) and `routes[].cache` (what one route
//! stores) — and three places in the pipeline: the lookup (phase 8: a usable entry answers, a
//! miss may wait on a fill already under way), the request transform (validators for a stale
//! entry), and what happens to the upstream's answer (phase 11: store it through a fill,
//! freshen on 304, serve stale on error). `Cache-Status` (RFC 9211) is set in phase 12.
//!
//! What is never stored, and why: responses to methods other than GET; `no-store` (request or
//! response); `private`; `Vary: *`; `Set-Cookie` (unless the route strips it); statuses a cache
//! may not store without explicit freshness (unless the upstream gives it); partial content; on
//! authenticated routes, responses without `public` / `s-maxage` / `must-revalidate` (RFC 9111
//! §3.5) unless the route stores them per principal. Entries of an authenticated route are
//! always in the principal's own partition of the key.

pub mod admin;
pub mod control;
pub mod entry;
pub mod fill;
pub mod key;
pub mod shared;
pub mod status;
pub mod store;

use crate::auth::Principal;
use crate::body::ResponseBody;
use crate::config::{CacheStoreConfig, Diag, Located, Route, RouteCacheConfig};
use crate::reject::Reject;
use crate::upstream::pool::PooledBody;
use control::Directives;
use entry::{Entry, Freshness, Times};
use fill::{Fill, FillHead, Outcome};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use key::{Vary, VaryValues};
use status::CacheStatus;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use store::{Found, Store};

const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_OBJECT_BYTES: u64 = 1024 * 1024;
const DEFAULT_COALESCE_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_UNCACHEABLE_S: u64 = 10;
const DEFAULT_JITTER_PERCENT: u32 = 5;
/// A fill whose body outgrows `max_object_bytes` keeps streaming to its readers (it is no
/// longer stored) up to this multiple of it; past that its readers are cut off.
const OVERSIZE_FACTOR: usize = 8;
/// Keys remembered as uncacheable, at most.
const MAX_UNCACHEABLE_KEYS: usize = 65_536;

/// `cache`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub coalesce_timeout: Duration,
    pub uncacheable_for: Duration,
    pub jitter_percent: u32,
    pub name: Arc<str>,
    pub status_header: bool,
    /// Routes with their own `max_bytes`, carved out of `max_bytes`.
    pub route_shares: Vec<(String, u64)>,
    /// `store: redis`: the shared tier's key prefix.
    pub shared_prefix: Option<String>,
}

impl CacheSpec {
    /// The store section, checked against the routes' own shares of it.
    pub fn build(
        section: Option<&Located<CacheStoreConfig>>,
        routes: &[Located<Route>],
        has_redis: bool,
        diag: &mut Diag,
    ) -> Option<CacheSpec> {
        let mark = diag.mark();
        let get = |v: &Option<Located<u64>>, d: u64| v.as_ref().map_or(d, |v| v.value);
        let c = section.map(|s| &s.value);
        let max_bytes = c.map_or(DEFAULT_MAX_BYTES, |c| get(&c.max_bytes, DEFAULT_MAX_BYTES));
        let max_object_bytes = c.map_or(DEFAULT_MAX_OBJECT_BYTES, |c| {
            get(&c.max_object_bytes, DEFAULT_MAX_OBJECT_BYTES)
        });
        if let Some(c) = c {
            if let Some(m) = &c.max_bytes {
                if m.value < 1024 * 1024 {
                    diag.err(
                        m.line,
                        "cache.max_bytes",
                        "must be at least 1048576 (1 MiB)",
                    );
                }
            }
            if let Some(m) = &c.max_object_bytes {
                if m.value == 0 || m.value > max_bytes / 4 {
                    diag.err(
                        m.line,
                        "cache.max_object_bytes",
                        format!(
                            "must be between 1 and a quarter of cache.max_bytes ({})",
                            max_bytes / 4
                        ),
                    );
                }
            }
            if let Some(s) = &c.store {
                match s.value.as_str() {
                    "local" => {}
                    "redis" if !has_redis => diag.err(
                        s.line,
                        "cache.store",
                        "`redis` needs the top-level `redis` section (the server the fleet shares)",
                    ),
                    "redis" => {}
                    other => diag.err(
                        s.line,
                        "cache.store",
                        format!("unknown store `{other}` (expected local or redis)"),
                    ),
                }
            }
            if let Some(t) = &c.coalesce_timeout_ms {
                if t.value == 0 || t.value > 60_000 {
                    diag.err(
                        t.line,
                        "cache.coalesce_timeout_ms",
                        "must be between 1 and 60000",
                    );
                }
            }
            if let Some(j) = &c.ttl_jitter_percent {
                if j.value > 50 {
                    diag.err(j.line, "cache.ttl_jitter_percent", "must be at most 50");
                }
            }
            if let Some(n) = &c.name {
                if n.value.is_empty() || !n.value.bytes().all(is_token_byte) {
                    diag.err(
                        n.line,
                        "cache.name",
                        "must be a token (letters, digits, `-`, `.`, `_`): it is the cache's name in Cache-Status",
                    );
                }
            }
        }
        let mut route_shares = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(m) = r.cache.as_ref().and_then(|c| c.max_bytes.as_ref()) {
                route_shares.push((r.name.value.to_string(), m.value));
                if m.value < 64 * 1024 {
                    diag.err(
                        m.line,
                        format!("routes[{i}].cache.max_bytes"),
                        "must be at least 65536",
                    );
                }
            }
        }
        let shares: u64 = route_shares.iter().map(|(_, b)| b).sum();
        if shares >= max_bytes && !route_shares.is_empty() {
            diag.err(
                section.map_or(0, |s| s.line),
                "cache.max_bytes",
                format!(
                    "the routes' own shares (routes[].cache.max_bytes, {shares} bytes in all) must leave room in cache.max_bytes ({max_bytes})"
                ),
            );
        }
        let spec = CacheSpec {
            max_bytes,
            max_object_bytes,
            coalesce_timeout: Duration::from_millis(c.map_or(DEFAULT_COALESCE_TIMEOUT_MS, |c| {
                get(&c.coalesce_timeout_ms, DEFAULT_COALESCE_TIMEOUT_MS)
            })),
            uncacheable_for: Duration::from_secs(c.map_or(DEFAULT_UNCACHEABLE_S, |c| {
                get(&c.uncacheable_s, DEFAULT_UNCACHEABLE_S)
            })),
            jitter_percent: c
                .and_then(|c| c.ttl_jitter_percent.as_ref())
                .map_or(DEFAULT_JITTER_PERCENT, |j| j.value),
            name: c
                .and_then(|c| c.name.as_ref())
                .map_or("portcullis".into(), |n| n.value.as_str().into()),
            status_header: c.and_then(|c| c.status_header).unwrap_or(true),
            route_shares,
            shared_prefix: c
                .filter(|c| {
                    c.store
                        .as_ref()
                        .is_some_and(|s| s.value.as_str() == "redis")
                })
                .map(|c| {
                    c.redis_key_prefix
                        .as_ref()
                        .map_or("portcullis:cache:".to_string(), |p| p.value.to_string())
                }),
        };
        diag.ok_since(mark, spec)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// `routes[].cache`, compiled.
#[derive(Debug)]
pub struct RoutePolicy {
    pub ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    pub vary: Vec<HeaderName>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub query_allow: Option<Vec<String>>,
    pub per_principal: bool,
    pub strip_set_cookie: bool,
    /// The route has its own store (`max_bytes`).
    pub own_store: bool,
}

impl RoutePolicy {
    /// `None` without reporting anything when the section turns caching off.
    pub fn build(
        c: &Located<RouteCacheConfig>,
        key: &str,
        is_direct: bool,
        diag: &mut Diag,
    ) -> Option<RoutePolicy> {
        let mark = diag.mark();
        if c.enabled == Some(false) {
            return None;
        }
        if is_direct {
            diag.err(
                c.line,
                format!("{key}.cache"),
                "a direct_response is answered by the gateway itself: there is nothing to cache",
            );
        }
        let secs = |v: &Option<Located<u64>>| v.as_ref().map(|v| Duration::from_secs(v.value));
        let mut vary = Vec::new();
        for name in c.vary.iter().flat_map(|v| v.value.iter()) {
            match HeaderName::from_bytes(name.value.as_bytes()) {
                Ok(n) if n == header::AUTHORIZATION || n == header::COOKIE => diag.err(
                    name.line,
                    format!("{key}.cache.vary"),
                    format!(
                        "`{}` would put a raw credential in the key; on an authenticated route the principal is already part of it",
                        name.value
                    ),
                ),
                Ok(n) if !vary.contains(&n) => vary.push(n),
                Ok(_) => diag.err(
                    name.line,
                    format!("{key}.cache.vary"),
                    format!("`{}` is listed twice", name.value),
                ),
                Err(_) => diag.err(
                    name.line,
                    format!("{key}.cache.vary"),
                    format!("`{}` is not a valid header name", name.value),
                ),
            }
        }
        if let (Some(t), Some(m)) = (&c.ttl_s, &c.max_ttl_s) {
            if t.value > m.value {
                diag.err(t.line, format!("{key}.cache.ttl_s"), "is above max_ttl_s");
            }
        }
        let strip_set_cookie = match &c.set_cookie {
            None => false,
            Some(s) if s.value.as_str() == "strip" => true,
            Some(s) if s.value.as_str() == "never" => false,
            Some(s) => {
                diag.err(
                    s.line,
                    format!("{key}.cache.set_cookie"),
                    format!("unknown value `{}` (expected never or strip)", s.value),
                );
                false
            }
        };
        let policy = RoutePolicy {
            ttl: secs(&c.ttl_s),
            max_ttl: secs(&c.max_ttl_s),
            vary,
            stale_while_revalidate: secs(&c.stale_while_revalidate_s).unwrap_or_default(),
            stale_if_error: secs(&c.stale_if_error_s).unwrap_or_default(),
            query_allow: c
                .query_allow
                .as_ref()
                .map(|q| q.value.iter().map(|n| n.value.to_string()).collect()),
            per_principal: c.per_principal,
            strip_set_cookie,
            own_store: c.max_bytes.is_some(),
        };
        diag.ok_since(mark, policy)
    }
}

/// A route's cache as requests see it: its policy and the store it uses.
pub struct RouteCache {
    pub policy: Arc<RoutePolicy>,
    pub store: Arc<Store>,
}

/// `portcullis explain`: whether the route caches this request, and what its key is made of.
pub fn explain(route: &crate::route::RouteRules, method: &Method, url: &key::UrlParts) -> String {
    let Some(p) = &route.cache else {
        return "cache: off (the route has no cache section)".into();
    };
    if method != Method::GET && method != Method::HEAD {
        return format!(
            "cache: bypassed (method {method}; a successful {method} invalidates the URL's entries)"
        );
    }
    let mut out = format!("cache: key {}", url.url_key(p.query_allow.as_deref()));
    if let Some(q) = &p.query_allow {
        out.push_str(&format!(" (query limited to [{}])", q.join(", ")));
    }
    out.push_str(" + the response's Vary");
    if !p.vary.is_empty() {
        let names: Vec<&str> = p.vary.iter().map(|n| n.as_str()).collect();
        out.push_str(&format!(" + [{}]", names.join(", ")));
    }
    if route.auth != crate::auth::AuthPolicy::None {
        out.push_str(if p.per_principal {
            " + the principal's partition (stored per principal)"
        } else {
            " + the principal's partition (stored only with public, s-maxage or must-revalidate)"
        });
    }
    match p.ttl {
        Some(t) => out.push_str(&format!(
            "; ttl_s {} when the upstream gives none",
            t.as_secs()
        )),
        None => out.push_str("; only responses with explicit freshness"),
    }
    if let Some(m) = p.max_ttl {
        out.push_str(&format!(", at most {} s", m.as_secs()));
    }
    if !p.stale_while_revalidate.is_zero() || !p.stale_if_error.is_zero() {
        out.push_str(&format!(
            "; stale-while-revalidate {} s, stale-if-error {} s",
            p.stale_while_revalidate.as_secs(),
            p.stale_if_error.as_secs()
        ));
    }
    out
}

/// Fills under way and keys remembered as uncacheable, shared by every route and carried
/// across reloads.
#[derive(Default)]
pub struct Coalescer {
    fills: Mutex<HashMap<Box<str>, Arc<Fill>>>,
    uncacheable: Mutex<HashMap<Box<str>, Instant>>,
}

impl Coalescer {
    fn remove(&self, key: &str, fill: &Arc<Fill>) {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        if fills.get(key).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            fills.remove(key);
        }
    }

    fn mark_uncacheable(&self, key: &str, for_: Duration) {
        let mut u = self.uncacheable.lock().unwrap_or_else(|e| e.into_inner());
        if u.len() >= MAX_UNCACHEABLE_KEYS {
            let now = Instant::now();
            u.retain(|_, until| *until > now);
            if u.len() >= MAX_UNCACHEABLE_KEYS {
                u.clear();
            }
        }
        u.insert(key.into(), Instant::now() + for_);
    }

    fn is_uncacheable(&self, key: &str) -> bool {
        let u = self.uncacheable.lock().unwrap_or_else(|e| e.into_inner());
        u.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn forget_uncacheable(&self, key: &str) {
        let mut u = self.uncacheable.lock().unwrap_or_else(|e| e.into_inner());
        u.remove(key);
    }
}

/// The cache of one snapshot: its settings, every store (for purges and invalidation), and the
/// shared coalescer.
pub struct CacheRuntime {
    pub spec: CacheSpec,
    pub stores: Vec<Arc<Store>>,
    pub coalescer: Arc<Coalescer>,
    /// `store: redis`: the tier the fleet shares.
    pub shared: Option<Arc<shared::SharedTier>>,
}

impl CacheRuntime {
    /// Removes (or marks stale) what a purge names, in every store.
    pub fn purge(&self, what: &store::Purge, soft: bool) -> usize {
        self.stores.iter().map(|s| s.purge(what, soft)).sum()
    }

    fn is_empty(&self) -> bool {
        self.shared.is_none() && self.stores.iter().all(|s| s.usage().entries == 0)
    }

    /// A purge: the in-process copies, then (with the shared tier) the shared copies and every
    /// other gateway's. Returns how many in-process and shared entries it removed or marked.
    pub async fn purge_everywhere(
        &self,
        what: &store::Purge<'_>,
        soft: bool,
    ) -> Result<(usize, Option<usize>), String> {
        let local = self.purge(what, soft);
        let shared = match &self.shared {
            Some(s) => Some(s.purge(what, soft).await?),
            None => None,
        };
        Ok((local, shared))
    }

    /// Another gateway's purge, as published on the shared tier's channel.
    pub fn apply_remote_purge(&self, payload: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
            return;
        };
        let soft = v["soft"].as_bool().unwrap_or(false);
        if let Some(u) = v["url"].as_str() {
            self.purge(&store::Purge::Url(u), soft);
        } else if let Some(p) = v["prefix"].as_str() {
            self.purge(&store::Purge::Prefix(p), soft);
        } else if let Some(k) = v["surrogate_key"].as_str() {
            self.purge(&store::Purge::SurrogateKey(k), soft);
        }
    }
}

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What an unsafe request invalidates when it succeeds (RFC 9111 §4.4): its target URI, and
/// the `Location` / `Content-Location` URIs on the same host.
pub struct Invalidation {
    scheme: &'static str,
    host: String,
    url: String,
}

impl Invalidation {
    /// `None` for safe methods, or when nothing is stored.
    pub fn for_request(
        method: &Method,
        url: &key::UrlParts<'_>,
        runtime: &CacheRuntime,
    ) -> Option<Invalidation> {
        if method.is_safe() || runtime.is_empty() {
            return None;
        }
        Some(Invalidation {
            scheme: if url.scheme == "https" {
                "https"
            } else {
                "http"
            },
            host: url.host.to_string(),
            url: url.url_key(None),
        })
    }

    /// After the upstream answered: a 2xx or 3xx invalidates.
    pub fn apply(&self, runtime: &CacheRuntime, status: StatusCode, response: &HeaderMap) {
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let target = key::UrlParts {
            scheme: self.scheme,
            host: &self.host,
            path: "/",
            query: None,
        };
        let mut urls = vec![self.url.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(other) = response
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| target.resolve_same_host(v))
            {
                urls.push(other);
            }
        }
        for url in &urls {
            runtime.purge(&store::Purge::Url(url), false);
        }
        if let Some(shared) = &runtime.shared {
            // The fleet's copies, off the request path.
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                for url in &urls {
                    let _ = shared.purge(&store::Purge::Url(url), false).await;
                }
            });
        }
    }
}

/// Stores carried across reloads: the shared one (kept while its size is unchanged) and one per
/// route with its own share (by route name).
#[derive(Default)]
pub struct CacheRegistry {
    shared: Option<Arc<Store>>,
    per_route: HashMap<String, Arc<Store>>,
    coalescer: Arc<Coalescer>,
    /// Kept while the Redis server and the prefix are unchanged.
    tier: Option<(String, Arc<shared::SharedTier>)>,
}

impl CacheRegistry {
    /// The runtime for `spec`, reusing every store whose size did not change.
    pub fn compile(
        &mut self,
        spec: &CacheSpec,
        redis: Option<&Arc<crate::redis_store::RedisStore>>,
        redis_changed: bool,
    ) -> Arc<CacheRuntime> {
        let tier = match (&spec.shared_prefix, redis) {
            (Some(prefix), Some(redis)) => match &self.tier {
                Some((p, t)) if p == prefix && !redis_changed => Some(Arc::clone(t)),
                _ => Some(Arc::new(shared::SharedTier::new(
                    Arc::clone(redis),
                    prefix.clone(),
                ))),
            },
            _ => None,
        };
        self.tier = spec.shared_prefix.clone().zip(tier.clone());
        let shares: u64 = spec.route_shares.iter().map(|(_, b)| b).sum();
        let shared_bytes = (spec.max_bytes - shares.min(spec.max_bytes)) as usize;
        let shared = match &self.shared {
            Some(s) if s.max_bytes == shared_bytes => Arc::clone(s),
            _ => Arc::new(Store::new("shared", shared_bytes)),
        };
        self.shared = Some(Arc::clone(&shared));
        let mut per_route = HashMap::new();
        for (name, bytes) in &spec.route_shares {
            let store = match self.per_route.get(name) {
                Some(s) if s.max_bytes == *bytes as usize => Arc::clone(s),
                _ => Arc::new(Store::new(name.clone(), *bytes as usize)),
            };
            per_route.insert(name.clone(), store);
        }
        self.per_route = per_route;
        let mut stores = vec![shared];
        let mut names: Vec<&String> = self.per_route.keys().collect();
        names.sort();
        stores.extend(names.into_iter().map(|n| Arc::clone(&self.per_route[n])));
        Arc::new(CacheRuntime {
            spec: spec.clone(),
            stores,
            coalescer: Arc::clone(&self.coalescer),
            shared: tier,
        })
    }

    /// The store route `name` uses.
    pub fn route(
        &self,
        name: &str,
        policy: &Arc<RoutePolicy>,
        runtime: &CacheRuntime,
    ) -> RouteCache {
        let store = policy
            .own_store
            .then(|| self.per_route.get(name).cloned())
            .flatten()
            .unwrap_or_else(|| Arc::clone(&runtime.stores[0]));
        RouteCache {
            policy: Arc::clone(policy),
            store,
        }
    }
}

/// Per-route cache counters (`/metrics`), carried with the route's metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub revalidated: AtomicU64,
    pub coalesced: AtomicU64,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    /// Bypasses by reason, in `BYPASS_REASONS` order.
    pub bypass: [AtomicU64; BYPASS_REASONS.len()],
}

pub const BYPASS_REASONS: [&str; 4] = ["method", "range", "no_store", "uncacheable"];

fn bypass(counters: &CacheCounters, reason: &str) {
    if let Some(i) = BYPASS_REASONS.iter().position(|r| *r == reason) {
        counters.bypass[i].fetch_add(1, Relaxed);
    }
}

/// What the lookup needs to know about the request.
pub struct LookupRequest<'a> {
    pub method: &'a Method,
    pub url: key::UrlParts<'a>,
    pub headers: &'a HeaderMap,
    pub principal: Option<&'a Principal>,
}

/// Phase 8's answer.
// The answer is moved once, straight to the client; boxing it would allocate on every hit.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// Served by the cache.
    Answer(Response<ResponseBody>, CacheStatus),
    /// Forwarded upstream; `Pending` decides what happens to the answer. Boxed: the request
    /// path moves it, and most routes never have one.
    Forward(Box<Pending>),
}

/// A request the cache sent upstream, and what it will do with the answer.
pub struct Pending {
    pub status: CacheStatus,
    /// The index key when the answer may be stored.
    index_key: Option<Arc<str>>,
    /// The key fills for this request coalesce on.
    fill_key: Option<Box<str>>,
    stale: Option<Arc<Entry>>,
    /// The upstream request carries the stale entry's validators: a 304 is about it.
    validating: bool,
    /// Serve `stale` now and refresh it in the background.
    background: bool,
    leader: Option<Leader>,
    request_time: SystemTime,
    request_directives: Directives,
    /// The request's own conditionals, answered by the cache.
    conditional: Conditional,
    /// The request's values of the route's `vary` headers and the names stored variants vary
    /// on, and the full request headers' values for the response's `Vary` once known.
    request_headers: HeaderMap,
    head_only: bool,
    authenticated: bool,
}

/// The leader of a fill: abandoned (waiters go upstream) if dropped before the head.
struct Leader {
    fill: Arc<Fill>,
    key: Box<str>,
    coalescer: Arc<Coalescer>,
    decided: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.decided {
            self.fill.abandon();
            self.coalescer.remove(&self.key, &self.fill);
        }
    }
}

/// Phase 8: the entry that answers this request, a fill to wait on, or what to forward.
pub async fn lookup(
    route: &RouteCache,
    runtime: &Arc<CacheRuntime>,
    counters: &CacheCounters,
    req: LookupRequest<'_>,
) -> Result<Lookup, Reject> {
    let now = SystemTime::now();
    let mut status = CacheStatus::default();
    let head_only = req.method == Method::HEAD;
    let fields = RequestFields::of(req.headers);
    let directives = if fields.cache_control || fields.pragma {
        Directives::of(req.headers)
    } else {
        Directives::default()
    };
    let conditional = fields.conditional();
    let forward = |status: CacheStatus| Pending {
        status,
        index_key: None,
        fill_key: None,
        stale: None,
        validating: false,
        background: false,
        leader: None,
        request_time: now,
        request_directives: directives.clone(),
        conditional: conditional.clone(),
        request_headers: HeaderMap::new(),
        head_only,
        authenticated: req.principal.is_some(),
    };
    if req.method != Method::GET && !head_only {
        status.fwd = Some("method");
        bypass(counters, "method");
        return Ok(Lookup::Forward(Box::new(forward(status))));
    }
    if fields.range {
        status.fwd = Some("bypass");
        status.detail = Some("range");
        bypass(counters, "range");
        return Ok(Lookup::Forward(Box::new(forward(status))));
    }
    let policy = &route.policy;
    let partition = key::partition(req.principal);
    // A plain string for the lookup; shared (`Arc`) only once a miss needs to keep it.
    let key_text = req.url.index_key(policy.query_allow.as_deref(), &partition);
    let mut found = route.store.lookup(&key_text, req.headers);
    if let (Found::Entry(e), false) = (
        &found,
        directives.no_cache || directives.max_age.is_present() || directives.min_fresh.is_present(),
    ) {
        // The common hit: fresh, no request directive to weigh (the age computed once).
        let age = e.age(now);
        if e.is_fresh_at(age) && !e.freshness.always_revalidate {
            counters.hits.fetch_add(1, Relaxed);
            let status = CacheStatus::hit(e.ttl_at(age));
            let answer = if conditional.satisfied_by(e) {
                e.not_modified(now)
            } else {
                e.response_at(age, head_only)
            };
            return Ok(Lookup::Answer(answer, status));
        }
    }
    let index_key: Arc<str> = key_text.into();
    if let (false, Some(tier)) = (matches!(found, Found::Entry(_)), &runtime.shared) {
        // The fleet's copy, if it has one (any Redis failure is a miss).
        tier.subscribe(Arc::downgrade(runtime));
        if let Some(e) = tier.lookup(&index_key, req.headers).await {
            if let Some(e) = route.store.insert(e) {
                found = Found::Entry(e);
            }
        }
    }
    let mut names: Vec<&HeaderName> = policy.vary.iter().collect();
    let other_names;
    match found {
        Found::Entry(e) => {
            if let Some(answer) = usable(&e, now, &directives, head_only, &conditional, &mut status)
            {
                if status.ttl.is_some_and(|t| t <= 0) {
                    counters.stale_served.fetch_add(1, Relaxed);
                } else {
                    counters.hits.fetch_add(1, Relaxed);
                }
                return Ok(Lookup::Answer(answer, status));
            }
            if directives.only_if_cached {
                // Stored, but not usable for this request: never forwarded (RFC 9111 §5.2.1.7).
                return Err(only_if_cached());
            }
            status.fwd = Some(if directives.no_cache {
                "request"
            } else {
                "stale"
            });
            status.ttl = Some(e.ttl(now));
            // Serve stale while one request refreshes it in the background.
            let swr = e.staleness(now) <= e.freshness.stale_while_revalidate
                && !e.freshness.forbids_stale
                && !e.freshness.always_revalidate
                && !directives.no_cache
                && !head_only;
            if swr {
                if e.refreshing.swap(true, Relaxed) {
                    counters.stale_served.fetch_add(1, Relaxed);
                    let (r, s) = stale_while_revalidate(&e, now, head_only, &conditional);
                    return Ok(Lookup::Answer(r, s));
                }
                let mut p = forward(status);
                p.index_key = Some(Arc::clone(&index_key));
                p.background = true;
                p.request_headers = req.headers.clone();
                p.validating = has_validator(&e);
                p.stale = Some(e);
                return Ok(Lookup::Forward(Box::new(p)));
            }
            counters.misses.fetch_add(1, Relaxed);
            let mut p = forward(status);
            p.index_key = (!directives.no_store && !head_only).then(|| Arc::clone(&index_key));
            p.request_headers = req.headers.clone();
            p.validating = p.index_key.is_some() && has_validator(&e);
            p.stale = Some(e);
            return Ok(Lookup::Forward(Box::new(p)));
        }
        Found::OtherVariant(n) => {
            status.fwd = Some("vary-miss");
            other_names = n;
            names.extend(other_names.iter());
        }
        Found::None => status.fwd = Some("uri-miss"),
    }
    if directives.only_if_cached {
        return Err(only_if_cached());
    }
    counters.misses.fetch_add(1, Relaxed);
    if directives.no_store || head_only {
        if directives.no_store {
            bypass(counters, "no_store");
        }
        return Ok(Lookup::Forward(Box::new(forward(status))));
    }
    let mut p = forward(status);
    p.index_key = Some(Arc::clone(&index_key));
    p.request_headers = req.headers.clone();
    let fill_key: Box<str> =
        format!("{index_key}\n{}", VaryValues::of(names, req.headers).text()).into();
    if runtime.coalescer.is_uncacheable(&fill_key) {
        p.status.detail = Some("uncacheable");
        bypass(counters, "uncacheable");
        p.fill_key = Some(fill_key);
        return Ok(Lookup::Forward(Box::new(p)));
    }
    // Coalesce: wait on the fill under way, or lead a new one.
    let existing = {
        let mut fills = runtime
            .coalescer
            .fills
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match fills.get(&fill_key) {
            Some(f) => Some(Arc::clone(f)),
            None => {
                let fill = Fill::new();
                fills.insert(fill_key.clone(), Arc::clone(&fill));
                p.leader = Some(Leader {
                    fill,
                    key: fill_key.clone(),
                    coalescer: Arc::clone(&runtime.coalescer),
                    decided: false,
                });
                None
            }
        }
    };
    p.fill_key = Some(fill_key);
    let Some(fill) = existing else {
        return Ok(Lookup::Forward(Box::new(p)));
    };
    p.status.collapsed = true;
    if let Outcome::Streaming(head) = fill.wait(runtime.spec.coalesce_timeout).await {
        if head.vary.matches(req.headers) {
            counters.coalesced.fetch_add(1, Relaxed);
            let mut r = Response::new(ResponseBody::Fill(fill.reader(head.length, false)));
            *r.status_mut() = head.status;
            *r.headers_mut() = head.headers.clone();
            r.headers_mut().insert(header::AGE, HeaderValue::from(0));
            let mut s = p.status;
            s.fwd_status = Some(head.status.as_u16());
            return Ok(Lookup::Answer(r, s));
        }
    }
    // The fill is of no use to this request: it goes upstream on its own.
    p.status.collapsed = false;
    Ok(Lookup::Forward(Box::new(p)))
}

/// `only-if-cached` with nothing usable stored: 504, the upstream never asked.
fn only_if_cached() -> Reject {
    Reject::Status(
        StatusCode::GATEWAY_TIMEOUT,
        "only-if-cached: no usable response is in the cache".into(),
    )
}

fn has_validator(e: &Entry) -> bool {
    e.etag().is_some() || e.last_modified().is_some()
}

/// The answer `e` gives this request without going upstream, if it may give one.
fn usable(
    e: &Entry,
    now: SystemTime,
    d: &Directives,
    head_only: bool,
    conditional: &Conditional,
    status: &mut CacheStatus,
) -> Option<Response<ResponseBody>> {
    let ttl = e.ttl(now);
    let age = e.age(now).as_secs();
    let within_request_limits = d.max_age.secs().is_none_or(|m| age <= m)
        && d.min_fresh.secs().is_none_or(|m| ttl >= m as i64);
    let fresh =
        e.is_fresh(now) && !e.freshness.always_revalidate && !d.no_cache && within_request_limits;
    // A client that accepts stale (`max-stale`) may get it, unless the response forbids it.
    let stale_ok = !fresh
        && !e.freshness.forbids_stale
        && !e.freshness.always_revalidate
        && !d.no_cache
        && d.max_age.secs().is_none_or(|m| age <= m)
        && d.max_stale
            .and_then(|m| m.secs())
            .is_some_and(|m| e.staleness(now).as_secs() <= m);
    if !(fresh || stale_ok) {
        return None;
    }
    *status = CacheStatus::hit(ttl);
    Some(answer_from(e, now, head_only, conditional))
}

/// A stale entry's answer within stale-while-revalidate (a refresh is under way or starting).
fn stale_while_revalidate(
    e: &Entry,
    now: SystemTime,
    head_only: bool,
    conditional: &Conditional,
) -> (Response<ResponseBody>, CacheStatus) {
    let mut s = CacheStatus::hit(e.ttl(now));
    s.detail = Some("stale-while-revalidate");
    (answer_from(e, now, head_only, conditional), s)
}

fn answer_from(
    e: &Entry,
    now: SystemTime,
    head_only: bool,
    conditional: &Conditional,
) -> Response<ResponseBody> {
    if conditional.satisfied_by(e) {
        e.not_modified(now)
    } else {
        e.response(now, head_only)
    }
}

/// The request fields the cache reads, found in one pass over the head (cheaper than a hashed
/// look-up each).
struct RequestFields<'a> {
    cache_control: bool,
    pragma: bool,
    range: bool,
    if_none_match: Option<&'a HeaderValue>,
    if_modified_since: Option<&'a HeaderValue>,
}

impl<'a> RequestFields<'a> {
    fn of(h: &'a HeaderMap) -> RequestFields<'a> {
        let mut f = RequestFields {
            cache_control: false,
            pragma: false,
            range: false,
            if_none_match: None,
            if_modified_since: None,
        };
        for (name, value) in h {
            if name == header::CACHE_CONTROL {
                f.cache_control = true;
            } else if name == header::PRAGMA {
                f.pragma = true;
            } else if name == header::RANGE {
                f.range = true;
            } else if name == header::IF_NONE_MATCH {
                f.if_none_match.get_or_insert(value);
            } else if name == header::IF_MODIFIED_SINCE {
                f.if_modified_since.get_or_insert(value);
            }
        }
        f
    }

    fn conditional(&self) -> Conditional {
        Conditional {
            if_none_match: self.if_none_match.cloned(),
            if_modified_since: self
                .if_modified_since
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
        }
    }
}

/// A request's `If-None-Match` / `If-Modified-Since`, which the cache answers itself.
#[derive(Debug, Default, Clone)]
pub struct Conditional {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

impl Conditional {
    /// RFC 9110 §13.2.2: `If-None-Match` first (weak comparison); `If-Modified-Since` only
    /// without it, against `Last-Modified` (or `Date` when there is none, RFC 9111 §4.3.2).
    fn satisfied_by(&self, e: &Entry) -> bool {
        if e.status != StatusCode::OK {
            return false;
        }
        if let Some(inm) = &self.if_none_match {
            let Some(etag) = e.etag().and_then(|t| t.to_str().ok()) else {
                return false;
            };
            let Ok(list) = inm.to_str() else { return false };
            return list
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || weak_tag(t) == weak_tag(etag));
        }
        if let Some(since) = self.if_modified_since {
            let modified = control::date(&e.headers, header::LAST_MODIFIED)
                .or_else(|| control::date(&e.headers, header::DATE));
            return modified.is_some_and(|m| m <= since);
        }
        false
    }
}

fn weak_tag(t: &str) -> &str {
    t.strip_prefix("W/").unwrap_or(t)
}

/// Conditional request fields a cache replaces with its own validators.
const CLIENT_CONDITIONALS: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

impl Pending {
    /// Answered from the stale entry now, refreshed in the background.
    pub fn refresh_in_background(&self) -> bool {
        self.background
    }

    /// Whether a failed upstream answer would be replaced by the stale entry (stale-if-error).
    pub fn serves_stale_on_error(&self) -> bool {
        self.stale.as_ref().is_some_and(|e| {
            !e.freshness.forbids_stale
                && e.staleness(SystemTime::now()) <= e.freshness.stale_if_error
                && !self.request_directives.no_cache
        })
    }

    /// What comes back is not stored (the fallback upstream answered in the primary's place).
    pub fn forbid_store(&mut self) {
        self.index_key = None;
    }

    /// The stale answer of a background refresh.
    pub fn stale_answer(&self) -> Option<(Response<ResponseBody>, CacheStatus)> {
        let e = self.stale.as_ref()?;
        Some(stale_while_revalidate(
            e,
            SystemTime::now(),
            self.head_only,
            &self.conditional,
        ))
    }

    /// Phase 10: the upstream request carries the cache's validators, not the client's (the
    /// cache answers the client's conditionals itself from what comes back).
    pub fn prepare_request(&self, headers: &mut HeaderMap) {
        if self.index_key.is_none() {
            return;
        }
        for name in &CLIENT_CONDITIONALS {
            headers.remove(name);
        }
        if let Some(e) = self.stale.as_ref().filter(|_| self.validating) {
            if let Some(t) = e.etag() {
                headers.insert(header::IF_NONE_MATCH, t.clone());
            }
            if let Some(m) = e.last_modified() {
                headers.insert(header::IF_MODIFIED_SINCE, m.clone());
            }
        }
    }

    /// Phase 11: what the client gets for the upstream's answer, and what is stored.
    pub fn complete(
        mut self,
        route: &RouteCache,
        runtime: &CacheRuntime,
        counters: &Arc<crate::observe::metrics::RouteMetrics>,
        result: Result<Response<PooledBody>, Reject>,
        body_timeout: Duration,
    ) -> (Result<Response<ResponseBody>, Reject>, CacheStatus) {
        let now = SystemTime::now();
        let c = &counters.cache;
        if self.background {
            // Whatever the refresh brings, the next stale use may start another.
            if let Some(e) = &self.stale {
                e.refreshing.store(false, Relaxed);
            }
        }
        let resp = match result {
            Ok(r) => r,
            Err(reject) => {
                // Only the upstream's failures: a client's own bad request is not hidden.
                let upstream_failed = matches!(
                    reject,
                    Reject::UpstreamConnect(_)
                        | Reject::UpstreamFailed(_)
                        | Reject::UpstreamTimeout(_)
                        | Reject::NoTargetAvailable(_)
                        | Reject::UpstreamBusy(_)
                );
                if upstream_failed {
                    if let Some(answer) = self.stale_if_error(now, c) {
                        return answer;
                    }
                }
                return (Err(reject), self.status);
            }
        };
        let status = resp.status();
        self.status.fwd_status = Some(status.as_u16());
        if status.is_server_error() {
            if let Some(answer) = self.stale_if_error(now, c) {
                return answer;
            }
        }
        // 304 to the cache's own validators: the stored entry, freshened.
        if status == StatusCode::NOT_MODIFIED && self.validating {
            if let Some(old) = self.stale.take() {
                let times = self.times(resp.headers(), now);
                let mut merged = old.headers.clone();
                for (n, v) in resp.headers() {
                    merged.insert(n, v.clone());
                }
                let freshness = freshness(
                    &route.policy,
                    &runtime.spec,
                    old.status,
                    &merged,
                    &Directives::of(&merged),
                    times.date,
                )
                .unwrap_or(Freshness {
                    lifetime: Duration::ZERO,
                    ..old.freshness
                });
                let fresh = old.freshened(resp.headers(), times, freshness);
                let answer = answer_from(&fresh, now, self.head_only, &self.conditional);
                self.status.ttl = Some(fresh.ttl(now));
                if !self.request_directives.no_store {
                    if let Some(stored) = route.store.replace(&old, fresh) {
                        if let Some(tier) = &runtime.shared {
                            tier.write(&stored);
                        }
                    }
                }
                c.revalidated.fetch_add(1, Relaxed);
                self.decide(Outcome::GoUpstream);
                return (Ok(answer), self.status);
            }
        }
        let (mut head, body) = resp.into_parts();
        let decision = self.index_key.as_ref().map(|k| {
            storable(
                &route.policy,
                &runtime.spec,
                &self.request_directives,
                self.authenticated,
                &head,
                &self.request_headers,
                Arc::clone(k),
                self.times(&head.headers, now),
            )
        });
        head.headers.remove(SURROGATE_KEY);
        let Some(Ok(stored)) = decision else {
            if decision.is_some() {
                c.not_stored.fetch_add(1, Relaxed);
                if let Some(k) = &self.fill_key {
                    runtime
                        .coalescer
                        .mark_uncacheable(k, runtime.spec.uncacheable_for);
                }
            }
            self.decide(Outcome::GoUpstream);
            return (
                Ok(Response::from_parts(head, ResponseBody::Upstream(body))),
                self.status,
            );
        };
        // Storable: every reader (this client, its waiters) streams from one fill.
        if let Some(k) = &self.fill_key {
            runtime.coalescer.forget_uncacheable(k);
        }
        let length = body.size_hint().exact();
        let fill = match &self.leader {
            Some(l) => Arc::clone(&l.fill),
            None => Fill::new(),
        };
        let fill_head = Arc::new(FillHead {
            status: head.status,
            headers: {
                let mut h = stored.headers.clone();
                if let Some(n) = length {
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                h
            },
            vary: stored.vary.clone(),
            length,
        });
        self.decide(Outcome::Streaming(fill_head));
        self.status.stored = true;
        tokio::spawn(pump(
            body,
            Arc::clone(&fill),
            stored,
            Arc::clone(&route.store),
            Arc::clone(&runtime.coalescer),
            self.leader.take().map(|l| l.key.clone()),
            runtime.spec.max_object_bytes as usize,
            runtime.spec.uncacheable_for,
            body_timeout,
            Arc::clone(counters),
            runtime.shared.clone(),
        ));
        let reader = fill.reader(length, self.head_only);
        (
            Ok(Response::from_parts(head, ResponseBody::Fill(reader))),
            self.status,
        )
    }

    fn decide(&mut self, outcome: Outcome) {
        if let Some(l) = &mut self.leader {
            l.decided = true;
            l.fill.decide(outcome.clone());
            if matches!(outcome, Outcome::GoUpstream) {
                l.coalescer.remove(&l.key, &l.fill);
            }
        }
    }

    /// RFC 5861 stale-if-error: the stale entry when the upstream failed, if it allows it.
    fn stale_if_error(
        &mut self,
        now: SystemTime,
        c: &CacheCounters,
    ) -> Option<(Result<Response<ResponseBody>, Reject>, CacheStatus)> {
        if !self.serves_stale_on_error() {
            return None;
        }
        let e = self.stale.as_ref()?;
        c.stale_served.fetch_add(1, Relaxed);
        let answer = answer_from(e, now, self.head_only, &self.conditional);
        let mut s = self.status;
        s.ttl = Some(e.ttl(now));
        s.detail = Some("stale-if-error");
        self.decide(Outcome::GoUpstream);
        Some((Ok(answer), s))
    }

    fn times(&self, headers: &HeaderMap, now: SystemTime) -> Times {
        Times {
            request_time: self.request_time,
            response_time: now,
            date: control::date(headers, header::DATE).unwrap_or(now),
            age_value: headers
                .get(header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        }
    }
}

const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Fields never kept in an entry: hop-by-hop ones, `Age` (recomputed), `Surrogate-Key`
/// (the gateway's, removed before responses leave).
pub fn is_never_stored(name: &HeaderName) -> bool {
    name == header::AGE
        || name == SURROGATE_KEY
        || name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// What a storable response becomes once its body is complete.
struct Stored {
    index_key: Arc<str>,
    status: StatusCode,
    headers: HeaderMap,
    vary: VaryValues,
    times: Times,
    freshness: Freshness,
    surrogate_keys: Box<[Box<str>]>,
}

/// RFC 9111 §3: whether the response may be stored, and how.
#[allow(clippy::too_many_arguments)]
fn storable(
    policy: &RoutePolicy,
    spec: &CacheSpec,
    request: &Directives,
    authenticated: bool,
    head: &http::response::Parts,
    request_headers: &HeaderMap,
    index_key: Arc<str>,
    times: Times,
) -> Result<Stored, &'static str> {
    let d = Directives::of(&head.headers);
    if request.no_store || d.no_store {
        return Err("no-store");
    }
    if d.private {
        return Err("private");
    }
    if !understood(head.status) {
        return Err("status");
    }
    if authenticated
        && !(d.public || d.s_maxage.is_present() || d.must_revalidate)
        && !policy.per_principal
    {
        return Err("authorization");
    }
    if request_headers.contains_key(header::AUTHORIZATION)
        && !authenticated
        && !(d.public || d.s_maxage.is_present() || d.must_revalidate)
    {
        return Err("authorization");
    }
    let has_cookie = head.headers.contains_key(header::SET_COOKIE);
    if has_cookie && !policy.strip_set_cookie {
        return Err("set-cookie");
    }
    let Vary::Headers(vary_names) = Vary::of(&head.headers) else {
        return Err("vary-star");
    };
    if head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > spec.max_object_bytes)
    {
        return Err("too-large");
    }
    let freshness = freshness(policy, spec, head.status, &head.headers, &d, times.date)
        .ok_or("no-freshness")?;
    let has_validator =
        head.headers.contains_key(header::ETAG) || head.headers.contains_key(header::LAST_MODIFIED);
    if freshness.lifetime.is_zero() && !has_validator {
        return Err("no-freshness");
    }
    let mut headers = HeaderMap::with_capacity(head.headers.len() + entry::SPARE_FIELDS);
    for (n, v) in &head.headers {
        if is_never_stored(n) || (n == header::SET_COOKIE) {
            continue;
        }
        headers.append(n.clone(), v.clone());
    }
    // Listed in `Connection`: hop-by-hop too.
    for v in head.headers.get_all(header::CONNECTION) {
        for name in v.to_str().unwrap_or("").split(',') {
            if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(n);
            }
        }
    }
    let surrogate_keys = head
        .headers
        .get_all(SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split_whitespace())
        .map(Box::from)
        .collect();
    let vary = VaryValues::of(vary_names.iter().chain(&policy.vary), request_headers);
    Ok(Stored {
        index_key,
        status: head.status,
        headers,
        vary,
        times,
        freshness,
        surrogate_keys,
    })
}

/// Statuses this cache understands well enough to store (a final, non-partial response).
fn understood(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 451 | 501
    )
}

/// RFC 9111 §4.2.2: statuses a cache may store without explicit freshness.
fn heuristically_cacheable(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// §4.2.1: `s-maxage` → `max-age` → `Expires` − `Date` → the route's `ttl_s` (for statuses
/// that allow it, or `public`), capped by `max_ttl_s` and shortened by the jitter.
fn freshness(
    policy: &RoutePolicy,
    spec: &CacheSpec,
    status: StatusCode,
    headers: &HeaderMap,
    d: &Directives,
    date: SystemTime,
) -> Option<Freshness> {
    let explicit = d
        .s_maxage
        .secs()
        .or(d.max_age.secs())
        .map(Duration::from_secs)
        .or_else(|| control::expires_lifetime(headers, date));
    let lifetime = match explicit {
        Some(l) => l,
        None if heuristically_cacheable(status) || d.public => policy.ttl?,
        None => return None,
    };
    let lifetime = policy.max_ttl.map_or(lifetime, |m| lifetime.min(m));
    let lifetime = jitter(lifetime, spec.jitter_percent);
    Some(Freshness {
        lifetime,
        stale_while_revalidate: d
            .stale_while_revalidate
            .secs()
            .map_or(policy.stale_while_revalidate, Duration::from_secs),
        stale_if_error: d
            .stale_if_error
            .secs()
            .map_or(policy.stale_if_error, Duration::from_secs),
        forbids_stale: d.forbids_stale(),
        always_revalidate: d.no_cache,
    })
}

/// Shortens `lifetime` by up to `percent` at random (lifetimes under 10 s are left alone).
fn jitter(lifetime: Duration, percent: u32) -> Duration {
    if percent == 0 || lifetime < Duration::from_secs(10) {
        return lifetime;
    }
    let max_ms = lifetime.as_millis() as u64 * u64::from(percent) / 100;
    lifetime - Duration::from_millis(fastrand::u64(0..=max_ms))
}

/// Drives a storable upstream body into its fill, independent of any client, and stores the
/// entry once the body is complete (before the fill leaves the coalescer, so a request that
/// arrives in between finds one or the other).
#[allow(clippy::too_many_arguments)]
async fn pump(
    mut body: PooledBody,
    fill: Arc<Fill>,
    stored: Stored,
    store: Arc<Store>,
    coalescer: Arc<Coalescer>,
    key: Option<Box<str>>,
    max_object: usize,
    uncacheable_for: Duration,
    idle: Duration,
    metrics: Arc<crate::observe::metrics::RouteMetrics>,
    tier: Option<Arc<shared::SharedTier>>,
) {
    use http_body_util::BodyExt;
    let leave = |fill: &Arc<Fill>| {
        if let Some(k) = &key {
            coalescer.remove(k, fill);
        }
    };
    let mut storing = true;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                fill.end(true);
                leave(&fill);
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            // Trailers are not stored: a cached response ends with its body.
            continue;
        };
        let held = fill.push(data);
        if held > max_object && storing {
            storing = false;
            leave(&fill);
            if let Some(k) = &key {
                coalescer.mark_uncacheable(k, uncacheable_for);
            }
            metrics.cache.not_stored.fetch_add(1, Relaxed);
        }
        if held > max_object * OVERSIZE_FACTOR {
            fill.end(true);
            return;
        }
    }
    let whole = fill.end(false);
    if let (true, Some(whole)) = (storing, whole) {
        let entry = Entry::new(
            stored.index_key,
            stored.status,
            stored.headers,
            whole,
            stored.vary,
            stored.times,
            stored.freshness,
            stored.surrogate_keys,
        );
        if let Some(stored) = store.insert(entry) {
            metrics.cache.stored.fetch_add(1, Relaxed);
            if let Some(tier) = &tier {
                tier.write(&stored);
            }
        }
    }
    leave(&fill);
}

#[cfg(test)]
mod tests;
