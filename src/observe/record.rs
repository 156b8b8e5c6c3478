//! What the gateway records about one request: gathered along the pipeline (`Trail`), turned
//! into a `Record` only when something consumes it (the access log, span export), and shared by
//! those consumers without copying.

use super::trace_context::TraceContext;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the pipeline learns about a request along the way. Plain fields set by the phases that
/// know them.
#[derive(Debug, Default)]
pub struct Trail {
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    /// Index of the last target tried, in the upstream's target list.
    pub target: Option<usize>,
    pub upstream_latency: Option<Duration>,
    pub retries: u32,
    /// One entry per retry (rare; no allocation when there is none).
    pub retry_events: Vec<RetryEvent>,
    pub bytes_in: u64,
    pub rate_limit: crate::ratelimit::RateResult,
    pub auth: AuthResult,
    /// Why authentication failed (`bad_signature`, `digest_mismatch`…).
    pub auth_reason: Option<&'static str>,
    pub principal: Option<Arc<crate::auth::Principal>>,
    /// The principal's consumer, and the plan its limits came from (`by_plan` routes).
    pub consumer: Option<Arc<crate::consumer::Consumer>>,
    pub plan: Option<Arc<str>>,
    /// The request's tenant (a `{tenant}` host's, else the credential's).
    pub tenant: Option<Arc<str>>,
    /// Counts a streamed request body of unknown length (only when recording).
    pub bytes_in_counter: Option<Arc<AtomicU64>>,
    /// What the CORS policy refused (`refused:origin`, `would_refuse:method`…).
    pub cors: Option<&'static str>,
    /// How the cache answered (`hit`, `miss`, `stale`, `revalidated`, `collapsed`, `bypass`).
    pub cache: Option<&'static str>,
    /// `copied`, or why the route's mirror did not copy the request (`sampled_out`, …).
    pub mirror: Option<&'static str>,
    /// The edge rule that decided (`ip:NAME` for IP rules; `NAME:log`, `NAME:report_only`
    /// when the request went on).
    pub rule: Option<Arc<str>>,
    /// The client address the request was handled with (the peer's unless a trusted proxy
    /// said otherwise); `None`: the connection's.
    pub client_ip: Option<Arc<str>>,
}

/// What authentication and authorization said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthResult {
    /// The route is public.
    #[default]
    None,
    Success,
    /// 401.
    Failure,
    /// 403.
    Denied,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Success => "success",
            AuthResult::Failure => "failure",
            AuthResult::Denied => "denied",
        }
    }
}

/// A retry: when it was decided, which try it starts and why the previous one failed.
#[derive(Debug, Clone)]
pub struct RetryEvent {
    pub at: Instant,
    pub attempt: u32,
    pub reason: String,
    /// The target that failed (`host:port`).
    pub target: String,
}

/// Everything the access log line and the exported span say about a request.
#[derive(Debug)]
pub struct Record {
    /// When the response head was ready (the access log's timestamp).
    pub timestamp: SystemTime,
    /// When the request arrived, for spans.
    pub started_at: SystemTime,
    pub started: Instant,
    pub request_id: http::HeaderValue,
    pub trace: Option<TraceContext>,
    pub route: Option<Arc<str>>,
    pub config_version: u64,
    pub method: http::Method,
    /// The request target as received; the path (and, with `include_query`, the masked query)
    /// is written from it off the request path.
    pub uri: http::Uri,
    pub include_query: bool,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub latency_us: u64,
    pub upstream_latency_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: Arc<str>,
    /// `none`, `success`, `failure` or `denied`.
    pub auth_result: &'static str,
    pub auth_reason: Option<&'static str>,
    pub principal: Option<Arc<crate::auth::Principal>>,
    pub consumer: Option<Arc<crate::consumer::Consumer>>,
    pub plan: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub rate_limit: crate::ratelimit::RateResult,
    pub retries: u32,
    pub retry_events: Vec<RetryEvent>,
    pub cors: Option<&'static str>,
    pub rule: Option<Arc<str>>,
    pub cache: Option<&'static str>,
    pub mirror: Option<&'static str>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            timestamp: SystemTime::UNIX_EPOCH,
            started_at: SystemTime::UNIX_EPOCH,
            started: Instant::now(),
            request_id: http::HeaderValue::from_static(""),
            trace: None,
            route: None,
            config_version: 0,
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            include_query: false,
            status: 0,
            upstream: None,
            target: None,
            latency_us: 0,
            upstream_latency_us: None,
            bytes_in: 0,
            bytes_out: 0,
            client_ip: Arc::from(""),
            auth_result: "none",
            auth_reason: None,
            principal: None,
            consumer: None,
            plan: None,
            tenant: None,
            rate_limit: crate::ratelimit::RateResult::None,
            retries: 0,
            retry_events: Vec::new(),
            cors: None,
            cache: None,
            mirror: None,
            rule: None,
        }
    }
}

impl Record {
    /// The path and, when queries are logged, the query with secrets masked.
    pub fn path_and_query(&self) -> (&str, Option<String>) {
        let query = self
            .uri
            .query()
            .filter(|_| self.include_query)
            .map(super::access_log::mask_query);
        (self.uri.path(), query)
    }

    /// The wall-clock time of a moment measured on the request's monotonic clock.
    pub fn wall_time(&self, at: Instant) -> SystemTime {
        self.started_at + at.saturating_duration_since(self.started)
    }
}
