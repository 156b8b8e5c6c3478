//! Shadow traffic: `routes[].mirror` sends a copy of sampled requests to a candidate upstream
//! and, with `compare: true`, compares the candidate's response with the primary's — and, for a
//! share of them, the primary's with a second primary target's, so that fields which differ
//! between two healthy primaries (timestamps, ids) are known as noise and not reported.
//!
//! The primary never waits for the copy, never shares back-pressure with it, and buffers
//! nothing on its behalf: the copy runs on its own task, to its own upstream, with its own
//! timeout; its request body is a tee of the primary's (kept only up to `max_body_bytes`,
//! refcounted chunks, never held back); copies in flight are capped and a full cap drops the
//! copy. Every request that reaches the forward phase and is not mirrored is counted with its
//! reason.

pub mod admin;
pub mod compare;
pub mod report;
mod tee;

use crate::body::filter::{FilterChain, Filtered};
use crate::body::{ResponseBody, UpstreamBody};
use crate::config::{Diag, Located, MirrorConfig, Route, Text};
use crate::observe::metrics::RouteMetrics;
use crate::observe::record::Trail;
use crate::reject::Reject;
use crate::snapshot::Snapshot;
use crate::upstream::forward::forward;
use crate::upstream::pool::copy_head;
use crate::upstream::spec::MAX_TIMEOUT_MS;
use crate::upstream::split::murmur3_x86_32;
use bytes::Bytes;
use compare::{BodyHasher, Ignore, Seen, SeenBody, DEFAULT_IGNORED_HEADERS};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use report::{Kept, Report, Thresholds};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Marks a copy: `mirror` for the candidate's, `noise` for the second primary's.
pub const SHADOW_HEADER: HeaderName = HeaderName::from_static("x-portcullis-shadow");

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Sampling shares are parts of a million.
const PARTS: u32 = 1_000_000;

/// Why a request that reached the forward phase was not mirrored (or its copy got no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    SampledOut,
    Method,
    BodyTooLarge,
    InFlightFull,
    MirrorError,
    MirrorTimeout,
    /// The client's request body did not arrive whole (the primary failed on it too).
    RequestIncomplete,
    /// WebSocket handshakes are never copied.
    Upgrade,
    /// The route's split sent the request to the mirror upstream itself.
    ServedByMirror,
}

impl Skip {
    pub const ALL: [Skip; 9] = [
        Skip::SampledOut,
        Skip::Method,
        Skip::BodyTooLarge,
        Skip::InFlightFull,
        Skip::MirrorError,
        Skip::MirrorTimeout,
        Skip::RequestIncomplete,
        Skip::Upgrade,
        Skip::ServedByMirror,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::SampledOut => "sampled_out",
            Skip::Method => "method",
            Skip::BodyTooLarge => "body_too_large",
            Skip::InFlightFull => "in_flight_full",
            Skip::MirrorError => "mirror_error",
            Skip::MirrorTimeout => "mirror_timeout",
            Skip::RequestIncomplete => "request_incomplete",
            Skip::Upgrade => "upgrade",
            Skip::ServedByMirror => "served_by_mirror",
        }
    }
}

/// A route's shadow counters and report; kept across reloads with the route's metrics.
#[derive(Debug, Default)]
pub struct ShadowCounters {
    /// Copies the candidate answered.
    pub mirrored: AtomicU64,
    pub skipped: [AtomicU64; Skip::ALL.len()],
    pub in_flight: AtomicU64,
    /// Copies answered whose comparison could not run (the primary failed or its body did not
    /// end), or that were not compared.
    pub compare_skipped: AtomicU64,
    /// Noise copies sent to a second primary target.
    pub noise_sent: AtomicU64,
    /// Touched by comparison tasks and the admin API only, never on a request's path.
    pub report: Mutex<Report>,
}

impl ShadowCounters {
    fn skip(&self, why: Skip) {
        self.skipped[why as usize].fetch_add(1, Relaxed);
    }

    pub fn skipped(&self, why: Skip) -> u64 {
        self.skipped[why as usize].load(Relaxed)
    }
}

/// What `compare: true` adds.
#[derive(Debug)]
pub struct ComparePolicy {
    pub ignore: Ignore,
    /// Parts of a million of compared requests also sent to a second primary target.
    noise_share: u32,
    pub thresholds: Thresholds,
    max_compare_bytes: usize,
    pub samples: usize,
}

/// `routes[].mirror`, compiled.
#[derive(Debug)]
pub struct MirrorPolicy {
    /// Position in the snapshot's upstreams.
    pub upstream: usize,
    pub upstream_name: Arc<str>,
    /// Parts of a million mirrored.
    share: u32,
    pub percent: f64,
    methods: Vec<Method>,
    max_in_flight: u64,
    max_body_bytes: u64,
    forward_credentials: bool,
    timeout: Option<Duration>,
    pub compare: Option<Arc<ComparePolicy>>,
}

fn percent(v: Option<&Located<f64>>, default: f64, key: &str, diag: &mut Diag) -> f64 {
    match v {
        None => default,
        Some(p) if (0.0..=100.0).contains(&p.value) => p.value,
        Some(p) => {
            diag.err(p.line, key, "must be a percentage from 0 to 100");
            default
        }
    }
}

fn bounded(v: Option<&Located<u64>>, default: u64, max: u64, key: &str, diag: &mut Diag) -> u64 {
    match v {
        None => default,
        Some(n) if (1..=max).contains(&n.value) => n.value,
        Some(n) => {
            diag.err(n.line, key, format!("must be from 1 to {max}"));
            default
        }
    }
}

fn share(percent: f64) -> u32 {
    (percent * f64::from(PARTS) / 100.0).round() as u32
}

impl MirrorPolicy {
    pub fn build(
        r: &Route,
        upstreams: &BTreeMap<&str, usize>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Option<MirrorPolicy>> {
        let Some(m) = &r.mirror else {
            return Some(None);
        };
        let key = format!("{key}.mirror");
        let mark = diag.mark();
        let m: &MirrorConfig = m;
        let upstream = upstreams.get(m.upstream.value.as_str()).copied();
        if upstream.is_none() {
            diag.err(
                m.upstream.line,
                format!("{key}.upstream"),
                format!("unknown upstream `{}`", m.upstream.value),
            );
        }
        if r.direct_response.is_some() {
            diag.err(
                m.upstream.line,
                &key,
                "a route with a direct_response has no upstream to mirror",
            );
        }
        let pct = percent(m.percent.as_ref(), 100.0, &format!("{key}.percent"), diag);
        let methods = match &m.methods {
            None => vec![Method::GET, Method::HEAD, Method::OPTIONS],
            Some(list) => list
                .iter()
                .filter_map(|t| method(t, &format!("{key}.methods"), diag))
                .collect(),
        };
        let max_in_flight = bounded(
            m.max_in_flight.as_ref(),
            64,
            100_000,
            &format!("{key}.max_in_flight"),
            diag,
        );
        let max_body_bytes = match &m.max_body_bytes {
            None => 64 * 1024,
            Some(n) if n.value <= 16 * 1024 * 1024 => n.value,
            Some(n) => {
                diag.err(
                    n.line,
                    format!("{key}.max_body_bytes"),
                    "must be at most 16777216 (16 MiB): the copy's body is held until it is whole",
                );
                0
            }
        };
        let timeout = m.timeout_ms.as_ref().map(|t| {
            if !(1..=MAX_TIMEOUT_MS).contains(&t.value) {
                diag.err(
                    t.line,
                    format!("{key}.timeout_ms"),
                    format!("must be from 1 to {MAX_TIMEOUT_MS}"),
                );
            }
            Duration::from_millis(t.value)
        });
        let compare = build_compare(m, &key, diag);
        if !diag.clean_since(mark) {
            return None;
        }
        Some(Some(MirrorPolicy {
            upstream: upstream?,
            upstream_name: m.upstream.value.as_str().into(),
            share: share(pct),
            percent: pct,
            methods,
            max_in_flight,
            max_body_bytes,
            forward_credentials: m.forward_credentials,
            timeout,
            compare: compare.map(Arc::new),
        }))
    }
}

fn method(t: &Located<Text>, key: &str, diag: &mut Diag) -> Option<Method> {
    match Method::from_bytes(t.value.as_str().to_ascii_uppercase().as_bytes()) {
        Ok(Method::CONNECT) | Err(_) => {
            diag.err(
                t.line,
                key,
                format!("`{}` is not a method that can be mirrored", t.value),
            );
            None
        }
        Ok(m) => Some(m),
    }
}

fn build_compare(m: &MirrorConfig, key: &str, diag: &mut Diag) -> Option<ComparePolicy> {
    if !m.compare {
        let set = [
            (!m.ignore_headers.is_empty(), "ignore_headers"),
            (!m.ignore_paths.is_empty(), "ignore_paths"),
            (m.noise_percent.is_some(), "noise_percent"),
            (
                m.absolute_threshold_percent.is_some(),
                "absolute_threshold_percent",
            ),
            (
                m.relative_threshold_percent.is_some(),
                "relative_threshold_percent",
            ),
            (m.max_compare_bytes.is_some(), "max_compare_bytes"),
            (m.samples.is_some(), "samples"),
        ];
        for (_, k) in set.iter().filter(|(given, _)| *given) {
            diag.err(
                m.upstream.line,
                format!("{key}.{k}"),
                "has no effect without `compare: true`",
            );
        }
        return None;
    }
    let mut headers: Vec<HeaderName> = DEFAULT_IGNORED_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    for h in &m.ignore_headers {
        match HeaderName::from_bytes(h.value.as_bytes()) {
            Ok(n) => {
                if !headers.contains(&n) {
                    headers.push(n);
                }
            }
            Err(_) => diag.err(
                h.line,
                format!("{key}.ignore_headers"),
                format!("`{}` is not a header name", h.value),
            ),
        }
    }
    let mut paths = Vec::new();
    for p in &m.ignore_paths {
        let ok = p.value.as_str() == "$"
            || (p.value.starts_with("$.") || p.value.starts_with("$[")) && !p.value.ends_with('.');
        if ok {
            paths.push(p.value.as_str().to_string());
        } else {
            diag.err(
                p.line,
                format!("{key}.ignore_paths"),
                format!(
                    "`{}` is not a field path: write `$.field`, `$.list[].field`",
                    p.value
                ),
            );
        }
    }
    let noise = percent(
        m.noise_percent.as_ref(),
        10.0,
        &format!("{key}.noise_percent"),
        diag,
    );
    let threshold = |v: Option<&Located<f64>>, default: f64, k: &str, diag: &mut Diag| match v {
        None => default,
        Some(t) if t.value >= 0.0 && t.value.is_finite() => t.value,
        Some(t) => {
            diag.err(t.line, format!("{key}.{k}"), "must be 0 or more");
            default
        }
    };
    let absolute = threshold(
        m.absolute_threshold_percent.as_ref(),
        1.0,
        "absolute_threshold_percent",
        diag,
    );
    let relative = threshold(
        m.relative_threshold_percent.as_ref(),
        20.0,
        "relative_threshold_percent",
        diag,
    );
    let max_compare_bytes = bounded(
        m.max_compare_bytes.as_ref(),
        256 * 1024,
        8 * 1024 * 1024,
        &format!("{key}.max_compare_bytes"),
        diag,
    ) as usize;
    let samples = match &m.samples {
        None => 20,
        Some(n) if n.value <= 1000 => n.value as usize,
        Some(n) => {
            diag.err(n.line, format!("{key}.samples"), "must be at most 1000");
            20
        }
    };
    Some(ComparePolicy {
        ignore: Ignore { headers, paths },
        noise_share: share(noise),
        thresholds: Thresholds { absolute, relative },
        max_compare_bytes,
        samples,
    })
}

impl MirrorPolicy {
    /// For `explain`: whether a request with `method` would be mirrored, and how.
    pub fn explain(&self, method: &Method) -> String {
        if !self.methods.contains(method) {
            let listed: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            return format!(
                "mirror: not for {method} (mirrored methods: {})",
                listed.join(", ")
            );
        }
        format!(
            "mirror: {}% of requests (by request id) copied to upstream {}{}, bodies up to {} bytes, at most {} in flight, credentials {}",
            self.percent,
            self.upstream_name,
            if self.compare.is_some() { ", compared" } else { "" },
            self.max_body_bytes,
            self.max_in_flight,
            if self.forward_credentials { "forwarded" } else { "removed" }
        )
    }
}

/// Deterministic on the request id: a sampled request can be found in both sides' logs.
fn sampled(request_id: &HeaderValue, seed: u32, share: u32) -> bool {
    share >= PARTS || murmur3_x86_32(request_id.as_bytes(), seed) % PARTS < share
}

/// One copy in flight, given back when its task ends however it ends.
struct InFlight(Arc<RouteMetrics>);

impl InFlight {
    fn take(metrics: &Arc<RouteMetrics>, max: u64) -> Option<InFlight> {
        let before = metrics.shadow.in_flight.fetch_add(1, Relaxed);
        let held = InFlight(Arc::clone(metrics));
        (before < max).then_some(held)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.shadow.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The primary's side of a compared copy: what the primary answered goes to the copy's task.
pub struct PrimaryTap {
    tx: oneshot::Sender<PrimaryAnswer>,
    max_compare_bytes: usize,
}

struct PrimaryAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: oneshot::Receiver<SeenBody>,
    /// The primary target that answered (the noise copy goes to another one).
    target: Option<usize>,
}

/// What the copy's task needs, started by [`MirrorPolicy::start`].
struct Copy {
    snapshot: Arc<Snapshot>,
    route: usize,
    primary_upstream: usize,
    head: Parts,
    /// The request body, when there is one: whole, or refused for its size (`Err(true)`).
    body: Option<oneshot::Receiver<Result<Bytes, ()>>>,
    /// The primary's head as it went out, for a noise copy.
    noise_head: Option<Parts>,
    primary: Option<oneshot::Receiver<PrimaryAnswer>>,
    timeout: Duration,
    request_id: HeaderValue,
    client_ip: Arc<str>,
    _slot: InFlight,
}

impl MirrorPolicy {
    /// Decides whether this request is copied and, if so, starts the copy on its own task.
    /// Returns the primary's body (a tee of it when the copy needs it), when the copy is
    /// compared the tap through which the primary's answer reaches the comparison, and for the
    /// access log `copied` or why not.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        parts: &Parts,
        body: UpstreamBody,
        request_id: &HeaderValue,
        snapshot: &Arc<Snapshot>,
        route: usize,
        primary_upstream: usize,
        route_timeout: Duration,
        client_ip: &Arc<str>,
    ) -> (UpstreamBody, Option<Box<PrimaryTap>>, &'static str) {
        let live = &snapshot.routes[route];
        let counters = &live.metrics.shadow;
        if primary_upstream == self.upstream {
            counters.skip(Skip::ServedByMirror);
            return (body, None, Skip::ServedByMirror.as_str());
        }
        if parts.headers.contains_key(header::UPGRADE) {
            counters.skip(Skip::Upgrade);
            return (body, None, Skip::Upgrade.as_str());
        }
        if !self.methods.contains(&parts.method) {
            counters.skip(Skip::Method);
            return (body, None, Skip::Method.as_str());
        }
        if !sampled(request_id, 0x5eed_0001, self.share) {
            counters.skip(Skip::SampledOut);
            return (body, None, Skip::SampledOut.as_str());
        }
        let has_body = !body.is_end_stream();
        if has_body
            && body
                .size_hint()
                .exact()
                .is_some_and(|n| n > self.max_body_bytes)
        {
            counters.skip(Skip::BodyTooLarge);
            return (body, None, Skip::BodyTooLarge.as_str());
        }
        let Some(slot) = InFlight::take(&live.metrics, self.max_in_flight) else {
            counters.skip(Skip::InFlightFull);
            return (body, None, Skip::InFlightFull.as_str());
        };

        let mut head = copy_head(&parts.method, &parts.uri, parts.version, &parts.headers);
        if !self.forward_credentials {
            for h in [
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
                header::COOKIE,
            ] {
                head.headers.remove(h);
            }
            head.headers.remove(X_API_KEY);
            for h in &live.credential_headers {
                head.headers.remove(h);
            }
        }
        head.headers
            .insert(SHADOW_HEADER, HeaderValue::from_static("mirror"));

        let (body, body_rx) = if !has_body {
            (body, None)
        } else if let UpstreamBody::Full(data) = &body {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(data.clone().unwrap_or_default()));
            (body, Some(rx))
        } else {
            let (tx, rx) = oneshot::channel();
            let mut chain = FilterChain::new();
            let declared = body.size_hint().exact();
            chain.push(Box::new(tee::RequestTee::new(
                self.max_body_bytes,
                declared,
                tx,
            )));
            (
                UpstreamBody::Filtered(Box::new(Filtered::new(body, chain))),
                Some(rx),
            )
        };

        let (tap, primary, noise_head) = match &self.compare {
            None => (None, None, None),
            Some(c) => {
                let (tx, rx) = oneshot::channel();
                let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                let noise = (safe
                    && !has_body
                    && snapshot.upstreams[primary_upstream].targets.len() > 1
                    && sampled(request_id, 0x5eed_0002, c.noise_share))
                .then(|| {
                    let mut h = copy_head(&parts.method, &parts.uri, parts.version, &parts.headers);
                    h.headers
                        .insert(SHADOW_HEADER, HeaderValue::from_static("noise"));
                    h
                });
                (
                    Some(Box::new(PrimaryTap {
                        tx,
                        max_compare_bytes: c.max_compare_bytes,
                    })),
                    Some(rx),
                    noise,
                )
            }
        };
        let copy = Copy {
            snapshot: Arc::clone(snapshot),
            route,
            primary_upstream,
            head,
            body: body_rx,
            noise_head,
            primary,
            timeout: self.timeout.unwrap_or(route_timeout),
            request_id: request_id.clone(),
            client_ip: Arc::clone(client_ip),
            _slot: slot,
        };
        // Boxed: the task holds a pointer, not the whole state machine moved by value.
        tokio::spawn(Box::pin(copy.run()));
        (body, tap, "copied")
    }
}

impl PrimaryTap {
    /// The primary's answer (or failure): its head goes to the comparison now, its body through
    /// a tee as it streams to the client.
    pub fn observe(
        self,
        result: Result<Response<ResponseBody>, Reject>,
        target: Option<usize>,
    ) -> Result<Response<ResponseBody>, Reject> {
        // A failed primary drops the sender: the comparison is skipped.
        let resp = result?;
        let (tx, rx) = oneshot::channel();
        let answer = PrimaryAnswer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: rx,
            target,
        };
        if self.tx.send(answer).is_err() {
            // The copy already ended (error, timeout): nothing to compare with.
            return Ok(resp);
        }
        let (head, body) = resp.into_parts();
        let declared = body.size_hint().exact();
        if declared == Some(0) {
            let _ = tx.send(BodyHasher::new(0).finish());
            return Ok(Response::from_parts(head, body));
        }
        let mut chain = FilterChain::new();
        chain.push(Box::new(tee::ResponseTee::new(
            self.max_compare_bytes,
            declared,
            tx,
        )));
        Ok(Response::from_parts(
            head,
            ResponseBody::Filtered(Box::new(Filtered::new(body, chain))),
        ))
    }
}

/// Reads a response body into what the comparison needs (the caller bounds the time).
async fn seen<B>(resp: Response<B>, cap: usize) -> Option<Seen>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let mut hasher = BodyHasher::new(cap);
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.ok()?.data_ref() {
            hasher.push(d);
        }
    }
    Some(Seen {
        status: parts.status,
        headers: parts.headers,
        body: hasher.finish(),
    })
}

/// Reads a body to its end without keeping it; false when it failed.
async fn drain<B: http_body::Body + Unpin>(mut body: B) -> bool {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

/// The same request sent to another healthy target of the primary upstream (noise).
async fn noise_answer(
    snapshot: &Snapshot,
    primary_upstream: usize,
    primary_target: Option<usize>,
    mut head: Parts,
    compare: &ComparePolicy,
    counters: &ShadowCounters,
) -> Option<Seen> {
    let up = &snapshot.upstreams[primary_upstream];
    let pool = up
        .targets
        .iter()
        .enumerate()
        .find(|(i, t)| Some(*i) != primary_target && t.state.is_healthy())
        .map(|(_, t)| Arc::clone(&t.pool))?;
    counters.noise_sent.fetch_add(1, Relaxed);
    if !head.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(pool.authority().as_str()) {
            head.headers.insert(header::HOST, v);
        }
    }
    let resp = pool
        .send(http::Request::from_parts(head, UpstreamBody::empty()))
        .await
        .ok()?;
    seen(resp, compare.max_compare_bytes).await
}

impl Copy {
    async fn run(self) {
        let Copy {
            snapshot,
            route,
            primary_upstream,
            head,
            body,
            noise_head,
            primary,
            timeout,
            request_id,
            client_ip,
            _slot,
        } = self;
        let live = &snapshot.routes[route];
        let counters = &live.metrics.shadow;
        let deadline = Instant::now() + timeout;
        let body = match body {
            None => UpstreamBody::empty(),
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(b))) => UpstreamBody::Full((!b.is_empty()).then_some(b)),
                Ok(Ok(Err(()))) => return counters.skip(Skip::BodyTooLarge),
                Ok(Err(_)) => return counters.skip(Skip::RequestIncomplete),
                Err(_) => return counters.skip(Skip::MirrorTimeout),
            },
        };
        let Some(policy) = live.rules.mirror.as_ref() else {
            return;
        };
        let method = head.method.clone();
        let uri = head.uri.clone();
        let mut trail = Trail::default();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let upstream = &snapshot.upstreams[policy.upstream];
        let sent = Box::pin(forward(
            upstream, None, remaining, head, body, &client_ip, &mut trail,
        ));
        let answer = match sent.await {
            Ok(r) => r,
            Err(Reject::UpstreamTimeout(_)) => return counters.skip(Skip::MirrorTimeout),
            Err(_) => return counters.skip(Skip::MirrorError),
        };
        let Some(compare) = &policy.compare else {
            // Read to the end (keeping nothing) so the connection goes back to the pool.
            match tokio::time::timeout_at(deadline, drain(answer.into_body())).await {
                Ok(true) => {
                    counters.mirrored.fetch_add(1, Relaxed);
                }
                Ok(false) => counters.skip(Skip::MirrorError),
                Err(_) => counters.skip(Skip::MirrorTimeout),
            }
            return;
        };
        let Ok(Some(candidate)) =
            tokio::time::timeout_at(deadline, seen(answer, compare.max_compare_bytes)).await
        else {
            return counters.skip(Skip::MirrorTimeout);
        };
        counters.mirrored.fetch_add(1, Relaxed);

        // The primary's answer: its head, then its body once it has streamed to the client —
        // and, for a noise sample, a second primary target's answer — all within the route's
        // timeout past the copy's deadline (one timer for the lot).
        let primary_deadline = deadline + live.rules.timeout;
        let primary_side = async {
            let answer = primary?.await.ok()?;
            let body = answer.body.await.ok()?;
            let primary = Seen {
                status: answer.status,
                headers: answer.headers,
                body,
            };
            let noise = match noise_head {
                Some(h) => {
                    noise_answer(
                        &snapshot,
                        primary_upstream,
                        answer.target,
                        h,
                        compare,
                        counters,
                    )
                    .await
                }
                None => None,
            };
            Some((primary, noise))
        };
        let Ok(Some((primary, noise))) =
            tokio::time::timeout_at(primary_deadline, primary_side).await
        else {
            counters.compare_skipped.fetch_add(1, Relaxed);
            return;
        };

        let diff = compare::differences(&primary, &candidate, &compare.ignore);
        let noise_diff = noise
            .as_ref()
            .map(|n| compare::differences(&primary, n, &compare.ignore));
        let mut report = counters.report.lock().unwrap_or_else(|p| p.into_inner());
        report.record(
            diff,
            noise_diff.as_ref(),
            |fields| Kept {
                request_id,
                method,
                uri,
                fields,
                primary_status: primary.status.as_u16(),
                candidate_status: candidate.status.as_u16(),
                primary_body: primary.body.bytes().map(report::sample_start),
                candidate_body: candidate.body.bytes().map(report::sample_start),
            },
            compare.samples,
        );
    }
}
