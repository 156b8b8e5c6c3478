//! Prometheus metrics. Every series a request touches is resolved when the config is compiled
//! (a route's or upstream's handles live in the snapshot), so recording is a handful of relaxed
//! atomic adds: no lock, no label lookup, no allocation on the request path. Written by hand
//! rather than with prometheus-client because that crate's histogram takes a lock per
//! observation and its label families a lock per lookup — the Canva 2024-11-12 failure mode.
//! Labels come only from config names (route, upstream, target address), so cardinality is
//! bounded by the config.

use http::Method;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the duration histograms, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }

    /// Observations per bucket (the last slot: above the largest bound) and their count.
    pub fn counts(&self) -> ([u64; BUCKETS.len() + 1], u64) {
        let mut out = [0; BUCKETS.len() + 1];
        for (slot, b) in out.iter_mut().zip(&self.buckets) {
            *slot = b.load(Relaxed);
        }
        let count = self.count.load(Relaxed);
        let bounded: u64 = out.iter().sum();
        out[BUCKETS.len()] = count.saturating_sub(bounded);
        (out, count)
    }
}

/// The `q` quantile (0..1) of observations counted per bucket, in seconds, interpolated
/// linearly inside the bucket as Prometheus' `histogram_quantile` does; `None` without
/// observations. Above the largest bound the largest bound is returned.
pub fn quantile(counts: &[u64; BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in counts.iter().enumerate() {
        let upto = below + n;
        if *n > 0 && upto as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else {
                return Some(BUCKETS[BUCKETS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = (rank - below as f64) / *n as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below = upto;
    }
    Some(BUCKETS[BUCKETS.len() - 1])
}

/// Number of histogram slots, the overflow slot included.
pub const HISTOGRAM_SLOTS: usize = BUCKETS.len() + 1;

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    }
}

/// Why a request did not get a 2xx/3xx from its upstream: who failed, and which gateway policy
/// refused it — so "4xx vs 5xx vs timeout" is one query
/// (`portcullis_request_errors_total{route,class,policy}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The upstream answered 4xx.
    UpstreamClientError,
    /// The upstream answered 5xx.
    Upstream5xx,
    /// No response head within the route timeout.
    Timeout,
    /// No connection to a target (refused, timed out, none healthy).
    ConnectFailure,
    /// The upstream closed or reset the connection without a response.
    Reset,
    /// Refused by the gateway, by this policy.
    Refused(Policy),
}

/// The gateway policy that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    NoRoute,
    Auth,
    Authorization,
    RateLimit,
    IpRules,
    EdgeRules,
    /// A request body or head over its limit (413, 431).
    Size,
    /// A request the RFCs or the route's request rules refuse (400, 415, 501, 408).
    Request,
    /// Load shedding or a full bulkhead.
    Overload,
    /// Anything else the gateway answered with an error (fault injection, a failed cache fill).
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 15] = [
        ErrorKind::UpstreamClientError,
        ErrorKind::Upstream5xx,
        ErrorKind::Timeout,
        ErrorKind::ConnectFailure,
        ErrorKind::Reset,
        ErrorKind::Refused(Policy::NoRoute),
        ErrorKind::Refused(Policy::Auth),
        ErrorKind::Refused(Policy::Authorization),
        ErrorKind::Refused(Policy::RateLimit),
        ErrorKind::Refused(Policy::IpRules),
        ErrorKind::Refused(Policy::EdgeRules),
        ErrorKind::Refused(Policy::Size),
        ErrorKind::Refused(Policy::Request),
        ErrorKind::Refused(Policy::Overload),
        ErrorKind::Refused(Policy::Other),
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// `(class, policy)` labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            ErrorKind::UpstreamClientError => ("upstream_4xx", ""),
            ErrorKind::Upstream5xx => ("upstream_5xx", ""),
            ErrorKind::Timeout => ("timeout", ""),
            ErrorKind::ConnectFailure => ("connect_failure", ""),
            ErrorKind::Reset => ("reset", ""),
            ErrorKind::Refused(p) => (
                "refused",
                match p {
                    Policy::NoRoute => "no_route",
                    Policy::Auth => "auth",
                    Policy::Authorization => "authorization",
                    Policy::RateLimit => "rate_limit",
                    Policy::IpRules => "ip_rules",
                    Policy::EdgeRules => "edge_rules",
                    Policy::Size => "size",
                    Policy::Request => "request",
                    Policy::Overload => "overload",
                    Policy::Other => "other",
                },
            ),
        }
    }
}

/// Series of one route (or of requests that matched none).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: [[AtomicU64; 5]; METHODS.len()],
    /// By `ErrorKind`.
    errors: [AtomicU64; ErrorKind::ALL.len()],
    pub duration: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Requests authenticated but refused by `authorization` (403).
    pub authz_denials: AtomicU64,
    /// Requests refused by authentication (401).
    pub auth_failures: AtomicU64,
    /// Requests refused by one of the route's rate limits (429).
    pub rate_limited: AtomicU64,
    pub cors: crate::policy::cors::CorsCounters,
    pub cache: crate::cache::CacheCounters,
    /// Requests sent to the route's fallback upstream.
    pub fallbacks: AtomicU64,
    /// Shadow copies (`mirror`) and their comparison.
    pub shadow: crate::shadow::ShadowCounters,
    /// Faults injected (`fault`).
    pub faults: crate::policy::fault::FaultCounters,
    /// Response bodies `response.json` shaped or let pass.
    pub json_shape: Arc<crate::policy::json_shape::JsonShapeCounters>,
}

impl RouteMetrics {
    pub fn record(
        &self,
        method: &Method,
        status: u16,
        latency: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.requests[method_index(method)][class].fetch_add(1, Relaxed);
        self.duration.observe(latency);
        self.bytes_in.fetch_add(bytes_in, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// Counts one request that ended in `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }

    /// Requests counted so far by status class (1xx..5xx).
    pub fn by_class(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for by_class in &self.requests {
            for (slot, n) in out.iter_mut().zip(by_class) {
                *slot += n.load(Relaxed);
            }
        }
        out
    }

    /// Requests and 5xx answers counted so far.
    pub fn totals(&self) -> (u64, u64) {
        let mut all = 0;
        let mut errors = 0;
        for by_class in &self.requests {
            for (class, n) in by_class.iter().enumerate() {
                let n = n.load(Relaxed);
                all += n;
                if class == 4 {
                    errors += n;
                }
            }
        }
        (all, errors)
    }
}

#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    pub duration: Histogram,
    /// Tries that got an answer or failed, and those that failed or answered 5xx (what a
    /// progressive rollout watches, reported with each heartbeat).
    pub tries: AtomicU64,
    pub failed_tries: AtomicU64,
}

/// One upstream's counters as a heartbeat reports them.
#[derive(Debug, Clone)]
pub struct UpstreamTotals {
    pub name: String,
    pub tries: u64,
    pub failed_tries: u64,
    pub latency: [u64; BUCKETS.len() + 1],
}

/// All series; the maps are touched only when a config is compiled and when `/metrics` is read.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    pub no_route: Arc<RouteMetrics>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamMetrics>>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Requests being handled, all listeners.
    pub in_flight: AtomicU64,
    /// Requests and 5xx answers of routes a reload removed, so process totals never go back.
    retired: Mutex<(u64, u64)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(name.to_string()).or_default())
    }

    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        let mut m = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(name.to_string()).or_default())
    }

    /// Every route's series (not the no-route one), by name.
    pub fn routes(&self) -> Vec<(String, Arc<RouteMetrics>)> {
        let m = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Drops series of routes and upstreams the latest config no longer has.
    pub fn retain(&self, routes: &[&str], upstreams: &[&str]) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, m| {
                let keep = routes.contains(&k.as_str());
                if !keep {
                    let (all, errors) = m.totals();
                    retired.0 += all;
                    retired.1 += errors;
                }
                keep
            });
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| upstreams.contains(&k.as_str()));
    }

    /// Requests and 5xx answers since the process started, all routes (what a canary rollout
    /// watches).
    pub fn request_totals(&self) -> (u64, u64) {
        let retired = *self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .values()
            .chain(std::iter::once(&self.no_route))
            .map(|m| m.totals())
            .fold(retired, |(a, e), (ra, re)| (a + ra, e + re))
    }

    /// Request latency of every route, per histogram bucket (what a canary's p99 gate reads).
    pub fn latency_counts(&self) -> [u64; BUCKETS.len() + 1] {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = [0; BUCKETS.len() + 1];
        for m in routes.values() {
            for (slot, n) in out.iter_mut().zip(m.duration.counts().0) {
                *slot += n;
            }
        }
        out
    }

    /// Every upstream's try counters and latency.
    pub fn upstream_totals(&self) -> Vec<UpstreamTotals> {
        let ups = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<UpstreamTotals> = ups
            .iter()
            .map(|(name, m)| UpstreamTotals {
                name: name.clone(),
                tries: m.tries.load(Relaxed),
                failed_tries: m.failed_tries.load(Relaxed),
                latency: m.duration.counts().0,
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Text exposition of everything the gateway knows; `extra` appends live state gathered
    /// by the caller (snapshot, upstream runtimes, access log).
    pub fn render_requests(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();
        let all: Vec<(&str, &RouteMetrics)> = names
            .iter()
            .map(|n| (n.as_str(), &*routes[*n]))
            .chain(std::iter::once(("", &*self.no_route)))
            .collect();

        out.push_str("# HELP portcullis_requests_total Requests by route (empty: no route matched), method and status class.\n");
        out.push_str("# TYPE portcullis_requests_total counter\n");
        for (route, m) in &all {
            for (mi, method) in METHODS.iter().enumerate() {
                for class in 0..5 {
                    let v = m.requests[mi][class].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "portcullis_requests_total{{route=\"{}\",method=\"{method}\",status_class=\"{}xx\"}} {v}",
                            escape(route),
                            class + 1
                        );
                    }
                }
            }
        }
        out.push_str("# HELP portcullis_request_errors_total Requests that did not get a 2xx or 3xx from their upstream, by route, class (upstream_4xx, upstream_5xx, timeout, connect_failure, reset, refused) and, when the gateway refused them, the policy that did.\n# TYPE portcullis_request_errors_total counter\n");
        for (route, m) in &all {
            for kind in ErrorKind::ALL {
                let v = m.errors[kind.index()].load(Relaxed);
                if v > 0 {
                    let (class, policy) = kind.labels();
                    let _ = writeln!(
                        out,
                        "portcullis_request_errors_total{{route=\"{}\",class=\"{class}\",policy=\"{policy}\"}} {v}",
                        escape(route)
                    );
                }
            }
        }
        out.push_str("# HELP portcullis_request_duration_seconds Time from request head to the last response byte, by route.\n");
        out.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        for (route, m) in &all {
            m.duration.render(
                out,
                "portcullis_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        for (metric, help, pick) in [
            (
                "portcullis_request_bytes_total",
                "Request body bytes received, by route.",
                0,
            ),
            (
                "portcullis_response_bytes_total",
                "Response body bytes sent, by route.",
                1,
            ),
            (
                "portcullis_authz_denials_total",
                "Authenticated requests refused by the route's authorization (403), by route.",
                2,
            ),
            (
                "portcullis_route_auth_failures_total",
                "Requests refused by the route's authentication (401), by route.",
                3,
            ),
            (
                "portcullis_route_rate_limited_total",
                "Requests refused by one of the route's rate limits (429), by route.",
                4,
            ),
            (
                "portcullis_route_fallbacks_total",
                "Requests sent to the route's fallback upstream after the primary failed, by route.",
                5,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (route, m) in &all {
                let v = match pick {
                    0 => m.bytes_in.load(Relaxed),
                    1 => m.bytes_out.load(Relaxed),
                    2 => m.authz_denials.load(Relaxed),
                    3 => m.auth_failures.load(Relaxed),
                    4 => m.rate_limited.load(Relaxed),
                    _ => m.fallbacks.load(Relaxed),
                };
                let _ = writeln!(out, "{metric}{{route=\"{}\"}} {v}", escape(route));
            }
        }
        out.push_str("# HELP portcullis_cors_preflights_total CORS preflights answered by the gateway, by route.\n# TYPE portcullis_cors_preflights_total counter\n");
        for (route, m) in &all {
            let v = m.cors.preflights.load(Relaxed);
            let _ = writeln!(
                out,
                "portcullis_cors_preflights_total{{route=\"{}\"}} {v}",
                escape(route)
            );
        }
        out.push_str("# HELP portcullis_cors_refused_total Cross-origin requests the route's CORS policy refused (mode=\"report_only\": would have refused), by route and reason.\n# TYPE portcullis_cors_refused_total counter\n");
        for (route, m) in &all {
            for (mode, by) in [
                ("enforce", &m.cors.refused),
                ("report_only", &m.cors.would_refuse),
            ] {
                for r in crate::policy::cors::Refusal::ALL {
                    let v = by[r as usize].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "portcullis_cors_refused_total{{route=\"{}\",reason=\"{}\",mode=\"{mode}\"}} {v}",
                            escape(route),
                            r.as_str()
                        );
                    }
                }
            }
        }
        out.push_str("# HELP portcullis_response_json_total Response bodies on routes with response.json, by route and result (shaped, or passed unchanged: too_large, not_json, encoded).\n# TYPE portcullis_response_json_total counter\n");
        for (route, m) in &all {
            for (result, v) in m.json_shape.all() {
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "portcullis_response_json_total{{route=\"{}\",result=\"{result}\"}} {v}",
                        escape(route)
                    );
                }
            }
        }
        drop(routes);

        let ups = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = ups.keys().collect();
        names.sort();
        out.push_str("# HELP portcullis_upstream_duration_seconds Time to the upstream's response head, per try, by upstream.\n");
        out.push_str("# TYPE portcullis_upstream_duration_seconds histogram\n");
        for n in names {
            ups[n].duration.render(
                out,
                "portcullis_upstream_duration_seconds",
                &format!("upstream=\"{}\"", escape(n)),
            );
        }
        drop(ups);

        out.push_str("# HELP portcullis_config_reloads_total Config reloads by result.\n# TYPE portcullis_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "portcullis_config_reloads_total{{result=\"success\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "portcullis_config_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failed.load(Relaxed)
        );
    }
}

/// Appends one gauge or counter family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

pub fn label(k: &str, v: &str) -> String {
    format!("{k}=\"{}\"", escape(v))
}

/// Samples labelled `result="…"`, one per counter.
pub fn by_result(counters: &[(&str, &AtomicU64)]) -> Vec<(String, f64)> {
    counters
        .iter()
        .map(|(result, n)| (label("result", result), n.load(Relaxed) as f64))
        .collect()
}
