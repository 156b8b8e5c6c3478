//! The request pipeline: every phase a proxied request goes through, in order, in one place.
//! Each phase calls the module that owns it and either continues or answers the request.

use crate::body::{ResponseBody, ServedBody, UpstreamBody};
use crate::forwarded;
use crate::grpc;
use crate::observe::record::{AuthResult, Record, Trail};
use crate::observe::trace_context::TraceContext;
use crate::observe::Completion;
use crate::policy::request_rules::BodyPlan;
use crate::ratelimit::key::KeyInput;
use crate::ratelimit::Refusal;
use crate::reject::Reject;
use crate::request_id;
use crate::router::normalize::normalize_path;
use crate::router::RequestView;
use crate::server::ConnContext;
use crate::snapshot::{Action, CompiledRoute, Snapshot};
use crate::upstream::forward::forward;
use crate::websocket::Upgrade;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Handles one request on the snapshot current when it arrived.
pub async fn handle(req: Request<Incoming>, conn: &Arc<ConnContext>) -> Response<ServedBody> {
    let started = std::time::Instant::now();
    let snapshot = conn.gateway.snapshot();
    let request_id = request_id::for_request(req.headers());
    let trace = snapshot
        .trace_context
        .then(|| TraceContext::from_headers(req.headers(), &snapshot.sampler));
    // Spans are exported for sampled traces only.
    let spans = snapshot
        .sinks
        .spans
        .as_ref()
        .filter(|_| trace.as_ref().is_some_and(|t| t.sampled()));
    // What the record needs from the request itself (cheap clones), only when used.
    let taken = (snapshot.sinks.access_log.is_some() || spans.is_some()).then(|| Taken {
        uri: req.uri().clone(),
        method: req.method().clone(),
        include_query: snapshot
            .sinks
            .access_log
            .as_ref()
            .is_some_and(|l| l.config.include_query),
        started,
        started_at: if spans.is_some() {
            std::time::SystemTime::now()
        } else {
            std::time::SystemTime::UNIX_EPOCH
        },
    });
    let method = req.method().clone();
    let grpc = grpc::is_grpc(req.headers());
    let mut trail = Trail::default();
    let mut resp = match run(
        req,
        conn,
        &snapshot,
        &request_id,
        trace.as_ref(),
        grpc,
        &mut trail,
    )
    .await
    {
        Ok(resp) => resp,
        Err(reject) if grpc => grpc::error_response(reject, &request_id),
        Err(reject) => reject.into_response(&request_id),
    };
    if let (Some(name), Some(t)) = (&snapshot.trace_id_header, &trace) {
        resp.headers_mut().insert(name.clone(), t.trace_id_header());
    }
    let status = resp.status().as_u16();
    let log = snapshot
        .sinks
        .access_log
        .as_ref()
        .filter(|log| log.wants(status))
        .cloned();
    let record = match taken {
        Some(taken) if log.is_some() || spans.is_some() => Some(Arc::new(record(
            &snapshot,
            &mut trail,
            &request_id,
            trace,
            conn,
            taken,
            status,
        ))),
        _ => None,
    };
    let metrics = snapshot.metrics_enabled.then(|| match trail.route {
        Some(r) => Arc::clone(&snapshot.routes[r].metrics),
        None => Arc::clone(&snapshot.no_route_metrics),
    });
    let done = (metrics.is_some() || record.is_some()).then(|| Completion {
        metrics,
        method,
        status,
        started,
        bytes_in: trail.bytes_in,
        bytes_in_counter: trail.bytes_in_counter.take(),
        record,
        log,
        spans: spans.cloned(),
    });
    resp.headers_mut().insert(request_id::HEADER, request_id);
    if let Some(hsts) = &conn.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    resp.map(|b| ServedBody::new(b, done))
}

/// Identity headers only ever come from the gateway: client copies of claim headers and
/// client-certificate headers are removed on every route, then set from what was verified.
/// Credentials the route's auth read stay at the gateway.
fn set_identity_headers(
    headers: &mut http::HeaderMap,
    snapshot: &Snapshot,
    route: &CompiledRoute,
    conn: &ConnContext,
    principal: Option<&crate::auth::Principal>,
) {
    for h in snapshot
        .forwarded_headers
        .iter()
        .chain(&route.credential_headers)
        .chain(&CLIENT_CERT_HEADERS)
    {
        headers.remove(h);
    }
    if let Some(cert) = &conn.client_cert {
        headers.insert(CLIENT_CERT_HEADERS[0].clone(), cert.subject.clone());
        if let Some(san) = &cert.san {
            headers.insert(CLIENT_CERT_HEADERS[1].clone(), san.clone());
        }
    }
    if let Some(p) = principal {
        route.auth.forward_claims(p, headers);
    }
}

/// Set only from a verified client certificate; client-sent copies never pass.
const CLIENT_CERT_HEADERS: [http::HeaderName; 2] = [
    http::HeaderName::from_static("x-client-cert-subject"),
    http::HeaderName::from_static("x-client-cert-san"),
];

/// Taken from the request before it is consumed, for its record.
struct Taken {
    uri: Uri,
    method: http::Method,
    include_query: bool,
    started: std::time::Instant,
    started_at: std::time::SystemTime,
}

fn record(
    snapshot: &Snapshot,
    trail: &mut Trail,
    request_id: &HeaderValue,
    trace: Option<TraceContext>,
    conn: &ConnContext,
    taken: Taken,
    status: u16,
) -> Record {
    let upstream = trail.upstream.map(|u| &snapshot.upstreams[u]);
    Record {
        timestamp: std::time::SystemTime::now(),
        started_at: taken.started_at,
        started: taken.started,
        request_id: request_id.clone(),
        trace,
        route: trail.route.map(|r| Arc::clone(&snapshot.routes[r].name)),
        config_version: snapshot.version,
        method: taken.method,
        uri: taken.uri,
        include_query: taken.include_query,
        status,
        upstream: upstream.map(|u| Arc::clone(&u.name)),
        target: upstream
            .zip(trail.target)
            .map(|(u, t)| Arc::clone(u.targets[t].pool.label())),
        latency_us: 0,
        upstream_latency_us: trail.upstream_latency.map(|d| d.as_micros() as u64),
        bytes_in: trail.bytes_in,
        bytes_out: 0,
        client_ip: Arc::clone(&conn.client_ip),
        auth_result: trail.auth.as_str(),
        principal: trail.principal.take(),
        rate_limit: trail.rate_limit,
        retries: trail.retries,
        retry_events: std::mem::take(&mut trail.retry_events),
    }
}

async fn run(
    mut req: Request<Incoming>,
    conn: &Arc<ConnContext>,
    snapshot: &Snapshot,
    request_id: &HeaderValue,
    trace: Option<&TraceContext>,
    grpc: bool,
    trail: &mut Trail,
) -> Result<Response<ResponseBody>, Reject> {
    // 1. accept: listener limits (load shedding, head size).
    // Listeners cannot change on reload, so the snapshot always knows this one.
    let limits = &snapshot
        .listener(&conn.listener.name)
        .ok_or(Reject::NoRoute)?
        .limits;
    let _slot = conn
        .listener
        .begin_request(limits.max_concurrent_requests)
        .ok_or(Reject::Overloaded)?;
    if head_size(&req) > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge(limits.max_header_bytes));
    }
    let upgrade = Upgrade::take(&mut req);

    // 2. route: host and normalized path against the compiled router.
    let host_value = request_host(&req);
    let host = host_value.as_ref().map(routing_host).unwrap_or_default();
    let path = normalize_path(req.uri().path(), snapshot.allow_encoded_slashes)
        .map_err(Reject::BadPath)?;
    let route_index = snapshot
        .router
        .route(&RequestView {
            host: &host,
            path: &path,
            method: req.method(),
            headers: req.headers(),
        })
        .ok_or(Reject::NoRoute)?;
    let route = &snapshot.routes[route_index];
    trail.route = Some(route_index);

    // 3. authenticate: the route's policy yields the principal (or 401).
    let principal = if route.auth.is_none() {
        None
    } else {
        match route
            .auth
            .authenticate(req.headers(), req.uri(), conn.client_cert.as_ref())
            .await
        {
            Ok(p) => {
                trail.auth = AuthResult::Success;
                trail.principal = p.clone();
                p
            }
            Err(f) => {
                trail.auth = AuthResult::Failure;
                return Err(Reject::Unauthorized(f));
            }
        }
    };

    // 4. authorize: required scopes and claims (or 403).
    if let Some(rules) = &route.authorize {
        if let Err(denied) = rules.check(principal.as_deref()) {
            trail.auth = AuthResult::Denied;
            route.metrics.authz_denials.fetch_add(1, Ordering::Relaxed);
            return Err(Reject::Forbidden(denied));
        }
    }

    // 5. rate limit: every limit the route applies, in order.
    let rate_headers = if route.rate_limits.is_empty() {
        None
    } else {
        let input = KeyInput {
            route: &route.name,
            client_ip: &conn.client_ip,
            headers: req.headers(),
            principal: principal.as_deref(),
        };
        match route.rate_limits.check(&input, &mut trail.rate_limit).await {
            Ok(h) => Some(h),
            Err(Refusal::Limited { limit, headers }) => {
                return Err(Reject::RateLimited(limit, Box::new(headers)))
            }
            Err(Refusal::StoreUnavailable { limit }) => {
                return Err(Reject::RateLimitStoreDown(limit))
            }
        }
    };

    // 6. validate request: required headers, content type, declared body size.
    let has_body = !req.body().is_end_stream();
    let content_length = req.body().size_hint().exact();
    let body_plan = route
        .request_rules
        .check(req.headers(), has_body, content_length)?;
    trail.bytes_in = content_length.unwrap_or(0);

    // 7. cache lookup: not built yet.

    // 8. direct responses are answered here.
    let upstream_index = match &route.action {
        Action::Direct(d) => {
            let mut resp = d.respond();
            if let Some(h) = &rate_headers {
                h.apply(resp.headers_mut());
            }
            return Ok(resp);
        }
        Action::Upstream(u) => *u,
        Action::Split(split) => split.pick(req.headers(), &conn.client_ip),
    };

    // 9. transform request: path rewrite, header rules, forwarding headers, body plan.
    let upstream_path = match &route.rewrite {
        Some(rw) => Cow::Owned(rw.apply(&path)),
        None => path,
    };
    let uri = upstream_path_and_query(&upstream_path, req.uri())?;
    let (mut parts, incoming) = req.into_parts();
    let body = match body_plan {
        BodyPlan::None => UpstreamBody::empty(),
        BodyPlan::Stream => UpstreamBody::Streaming {
            inner: incoming,
            limit: route.request_rules.max_body_bytes,
            seen: 0,
            counter: match content_length {
                None => {
                    let c = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    trail.bytes_in_counter = Some(Arc::clone(&c));
                    Some(c)
                }
                Some(_) => None,
            },
        },
        // Boxed: a rare path whose future would otherwise enlarge every request's.
        BodyPlan::Buffer => {
            let body = Box::pin(buffer_body(incoming, route)).await?;
            if let UpstreamBody::Full(Some(b)) = &body {
                trail.bytes_in = b.len() as u64;
            }
            body
        }
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    prepare_upstream_headers(
        &mut parts.headers,
        conn,
        host_value,
        request_id,
        route,
        &body,
    );
    if let Some(u) = &upgrade {
        u.prepare_request(&mut parts.headers);
    }
    set_identity_headers(
        &mut parts.headers,
        snapshot,
        route,
        conn,
        principal.as_deref(),
    );
    if let Some(t) = trace {
        t.apply(&mut parts.headers);
    }

    // 10-11. select a target and forward: bulkhead, balancer, breaker, timeouts, retries.
    // A gRPC client's own deadline shortens the route's timeout.
    let timeout = grpc
        .then(|| grpc::deadline(&parts.headers))
        .flatten()
        .map_or(route.timeout, |d| d.min(route.timeout));
    let upstream = &snapshot.upstreams[upstream_index];
    trail.upstream = Some(upstream_index);
    let mut resp = forward(
        upstream,
        route.retry.as_ref(),
        timeout,
        parts,
        body,
        &conn.client_ip,
        trail,
    )
    .await?;

    // 12. transform response (a WebSocket answered with 101 becomes a tunnel here).
    forwarded::strip_hop_by_hop(resp.headers_mut());
    if let Some(u) = upgrade {
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        u.complete(&mut resp, idle, Arc::clone(conn));
    }
    route.response_headers.apply(resp.headers_mut());
    if let Some(h) = &rate_headers {
        h.apply(resp.headers_mut());
    }
    Ok(resp.map(ResponseBody::Upstream))
}

/// Approximate size of the request head as it arrived: request line plus `name: value\r\n` per
/// header.
fn head_size(req: &Request<Incoming>) -> u64 {
    let uri = req.uri();
    let line = req.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + headers) as u64
}

/// The host the client asked for, as sent (Host header, or the :authority of h2 and
/// absolute-form requests).
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers().get(header::HOST).cloned()
}

/// The host for routing: lower-case, port and trailing dot removed.
fn routing_host(h: &HeaderValue) -> Cow<'_, str> {
    let s = h.to_str().unwrap_or("");
    let without_port = if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => s,
        }
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The origin-form target sent upstream. When the path is unchanged (already normal, not
/// rewritten) the client's path-and-query is reused as it is.
fn upstream_path_and_query(path: &str, original: &Uri) -> Result<Uri, Reject> {
    let path_and_query = match original.path_and_query() {
        Some(pq) if pq.path() == path => pq.clone(),
        _ => {
            let query = original.query();
            let mut s = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
            s.push_str(path);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::from_maybe_shared(s)
                .map_err(|_| Reject::BadRequest("request target cannot be forwarded".into()))?
        }
    };
    Ok(Uri::from(path_and_query))
}

/// Reads a chunked body whose route limit is small, refusing it whole if it is too large.
async fn buffer_body(incoming: Incoming, route: &CompiledRoute) -> Result<UpstreamBody, Reject> {
    let limit = route.request_rules.max_body_bytes;
    let read = tokio::time::timeout(
        route.timeout,
        Limited::new(incoming, limit as usize).collect(),
    )
    .await;
    match read {
        Err(_) => Err(Reject::Status(
            http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} ms",
                route.timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Reject::PayloadTooLarge(limit))
        }
        Ok(Err(e)) => Err(Reject::ClientBody(format!(
            "client request body failed: {e}"
        ))),
        Ok(Ok(collected)) => Ok(UpstreamBody::Full(Some(collected.to_bytes()))),
    }
}

fn prepare_upstream_headers(
    headers: &mut http::HeaderMap,
    conn: &ConnContext,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    route: &CompiledRoute,
    body: &UpstreamBody,
) {
    forwarded::strip_hop_by_hop(headers);
    // The gateway answers `Expect: 100-continue` itself when it reads the body.
    headers.remove(header::EXPECT);
    forwarded::set_forwarded(headers, &conn.client_ip, conn.scheme, host.as_ref());
    // The client's Host goes upstream (for HTTP/1.0 requests without one, `forward` uses the
    // target's address).
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
    headers.insert(request_id::HEADER, request_id.clone());
    if let UpstreamBody::Full(data) = body {
        let len = data.as_ref().map_or(0, |d| d.len());
        if len > 0 || headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    route.request_headers.apply(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_host_strips_port_and_case() {
        let h = |s: &str| routing_host(&HeaderValue::from_str(s).unwrap()).into_owned();
        assert_eq!(h("API.Example.com:8080"), "api.example.com");
        assert_eq!(h("api.example.com."), "api.example.com");
        assert_eq!(h("[::1]:8080"), "::1");
        assert_eq!(h("localhost"), "localhost");
    }
}
