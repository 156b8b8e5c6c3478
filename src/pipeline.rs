//! The request pipeline: every phase a request goes through, in order, in one place. Each
//! phase calls the module that owns it and either continues or answers the request. The list
//! (`shared/DESIGN.md`, README "Architecture"):
//!
//!  1. accept — listener limits, request id, trace context; the one client address, the
//!     listener's IP rules, the built-in request rules
//!  2. route — host, path, method, headers (a CORS preflight by the method it asks about)
//!  3. early answers — the route's IP rules and request rules, then what must not need
//!     credentials (CORS preflights)
//!  4. authenticate — then the credential's consumer (file or consumer store)
//!  5. authorize
//!  6. rate limit — the route's limits, then its consumer's plan's (`by_plan`)
//!  7. validate request — required headers, content type, size; a body held whole is read
//!     here and checked against the route's JSON Schema; request-body filters
//!  8. cache lookup
//!  9. direct response
//! 10. transform request — rewrite, header rules, forwarding and identity headers
//! 11. forward — split, balancer, breaker, bulkhead, timeouts, retries
//! 12. response headers — every response, the upstream's and the gateway's own
//! 13. response-body filters
//! 14. log — metrics, access log, span (when the body ends, off the request path)

use crate::auth::signature::digest;
use crate::auth::{AuthRequest, Principal};
use crate::body::filter::{FilterChain, Filtered};
use crate::body::read::read_whole;
use crate::body::{ResponseBody, ServedBody, UpstreamBody};
use crate::cache::key::UrlParts;
use crate::cache::status::CacheStatus;
use crate::cache::{Invalidation, Lookup, LookupRequest};
use crate::connection::ConnContext;
use crate::edge::client_addr::{self, ClientAddr};
use crate::edge::rules::RuleHit;
use crate::forwarded;
use crate::grpc;
use crate::http_rules;
use crate::observe::record::{AuthResult, Record, Trail};
use crate::observe::trace_context::TraceContext;
use crate::observe::Completion;
use crate::policy::compression::{Codec, CompressionPolicy};
use crate::policy::request_rules::BodyPlan;
use crate::policy::template::TemplateInput;
use crate::policy::vary::add_vary;
use crate::ratelimit::key::KeyInput;
use crate::ratelimit::{RateHeaders, Refusal};
use crate::reject::Reject;
use crate::request_id;
use crate::route::Action;
use crate::router::normalize::{normalize_path, routing_host};
use crate::router::RequestView;
use crate::snapshot::{LiveRoute, Snapshot};
use crate::upstream::forward::forward;
use crate::upstream::pool::copy_head;
use crate::websocket::Upgrade;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What the phases learn about one request, for the phases after them and for the log.
#[derive(Default)]
struct Exchange {
    trail: Trail,
    /// What the rate limits said (phase 6), set on whatever response the request gets.
    rate_headers: Option<RateHeaders>,
    /// A WebSocket handshake's client side, completed once the response is final.
    upgrade: Option<Upgrade>,
    /// The upstream answered (rather than the gateway itself).
    from_upstream: bool,
    /// The request's `Origin`, kept when a CORS policy applies.
    origin: Option<HeaderValue>,
    /// The CORS policy decided in phase 3, on a preflight (answered, or in report-only mode
    /// counted): phase 12 leaves CORS alone.
    cors_decided: bool,
    /// How the cache handled the request (routes with a cache), for `Cache-Status`.
    cache: Option<CacheStatus>,
    /// Answered from a stored entry (its hop-by-hop fields were removed when it was stored).
    from_cache: bool,
}

/// Handles one request on the snapshot current when it arrived.
pub async fn handle(req: Request<Incoming>, conn: &Arc<ConnContext>) -> Response<ServedBody> {
    // 1. accept: request id and trace context, and what the record needs from the request.
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
    // Cheap clones, only when a record is kept.
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
    let http1 = req.version() < Version::HTTP_2;
    let grpc = grpc::is_grpc(req.headers());
    let mut ex = Exchange::default();
    let mut error = None;
    // 2–11, 13.
    let mut resp = match run(
        req,
        conn,
        &snapshot,
        &request_id,
        trace.as_ref(),
        grpc,
        &mut ex,
    )
    .await
    {
        Ok(resp) => resp,
        Err(reject) => {
            error = Some(reject.error_kind());
            if grpc {
                grpc::error_response(reject, &request_id)
            } else {
                reject.into_response(&request_id)
            }
        }
    };

    // The trace id header (when configured) is made before the trace moves into the record.
    let trace_id = snapshot
        .trace_id_header
        .as_ref()
        .zip(trace.as_ref())
        .map(|(name, t)| (name.clone(), t.trace_id_header()));

    // 12. response headers, on every response.
    let route = ex.trail.route.map(|r| &snapshot.routes[r]);
    response_headers(
        resp.headers_mut(),
        &mut ex,
        route,
        &snapshot,
        conn,
        trace_id,
        &request_id,
    );
    // Draining: an HTTP/1.1 client reconnects (through its load balancer) for its next request.
    if http1 && conn.gateway.is_draining() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    // 14. log: what is recorded when the body ends.
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
            &mut ex.trail,
            &request_id,
            trace,
            conn,
            taken,
            status,
        ))),
        _ => None,
    };
    let metrics = snapshot.metrics_enabled.then(|| match route {
        Some(r) => Arc::clone(&r.metrics),
        None => Arc::clone(&snapshot.no_route_metrics),
    });
    let error = error.or_else(|| {
        use crate::observe::metrics::ErrorKind;
        (ex.from_upstream && !ex.from_cache && status >= 400).then_some(if status >= 500 {
            ErrorKind::Upstream5xx
        } else {
            ErrorKind::UpstreamClientError
        })
    });
    if let (Some(kind), Some(m)) = (error, &metrics) {
        m.error(kind);
    }
    let done = (metrics.is_some() || record.is_some()).then(|| Completion {
        metrics,
        method,
        status,
        started,
        bytes_in: ex.trail.bytes_in,
        bytes_in_counter: ex.trail.bytes_in_counter.take(),
        record,
        log,
        spans: spans.cloned(),
    });

    // A WebSocket answered with 101 becomes a tunnel once its headers are final.
    if let (Some(u), Some(listener)) = (ex.upgrade.take(), snapshot.listener(&conn.listener.name)) {
        let idle = Duration::from_millis(listener.limits.idle_timeout_ms);
        u.complete(&mut resp, idle, Arc::clone(conn));
    }
    resp.map(|b| ServedBody::new(b, done))
}

/// Phases 1–11 and 13; a refusal anywhere is answered by the caller.
async fn run(
    mut req: Request<Incoming>,
    conn: &Arc<ConnContext>,
    snapshot: &Arc<Snapshot>,
    request_id: &HeaderValue,
    trace: Option<&TraceContext>,
    grpc: bool,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, Reject> {
    // 1. accept: listener limits (load shedding, head size).
    // Listeners cannot change on reload, so the snapshot always knows this one.
    let listener = snapshot
        .listener(&conn.listener.name)
        .ok_or(Reject::NoRoute)?;
    let limits = &listener.limits;
    let _slot = conn
        .listener
        .begin_request(limits.max_concurrent_requests)
        .ok_or(Reject::Overloaded)?;
    if head_size(&req) > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge(limits.max_header_bytes));
    }
    let host_header = http_rules::check_request(&req)?.cloned();
    // The one client address (trusted proxies' chains read), then the listener's IP rules and
    // the built-in request rules: refused here, a request reaches neither routing nor auth.
    let client = client_addr::resolve(
        conn.peer_ip,
        &conn.client_ip,
        listener.trusted_proxies.as_deref(),
        req.headers(),
    );
    if client.peer_trusted {
        ex.trail.client_ip = Some(Arc::clone(&client.text));
    }
    if let Some(rule) = snapshot
        .edge
        .ip_rules
        .first_denial(&listener.ip_rules, client.ip)
    {
        ex.trail.rule = Some(format!("ip:{}", rule.name).into());
        return Err(Reject::IpDenied(Arc::clone(&rule.name)));
    }
    if let Some(hit) =
        snapshot
            .edge
            .rules
            .check_builtin(req.method(), req.uri().path(), req.headers())
    {
        edge_rule_hit(hit, &mut ex.trail)?;
    }
    let upgrade = Upgrade::take(&mut req);

    // 2. route: host and normalized path against the compiled router.
    let host_value = request_host(&req, host_header);
    let host = host_value
        .as_ref()
        .map(|h| routing_host(h.to_str().unwrap_or("")))
        .unwrap_or_default();
    // Taken out of the request (a move; `/` is left): the phases below borrow the path while
    // phase 7 may read the body.
    let target = std::mem::take(req.uri_mut());
    let path =
        normalize_path(target.path(), snapshot.allow_encoded_slashes).map_err(Reject::BadPath)?;
    let view = RequestView {
        host: &host,
        path: &path,
        method: req.method(),
        any_method: false,
        headers: req.headers(),
        query: target.query(),
    };
    let routed = match snapshot.router.route(&view) {
        Some(i) => Some((i, false)),
        None => preflight_route(snapshot, &view).map(|i| (i, true)),
    };
    let Some((route_index, by_preflight)) = routed else {
        if snapshot.default_cors.is_some() {
            ex.origin = req.headers().get(header::ORIGIN).cloned();
        }
        return Err(Reject::NoRoute);
    };
    let route = &snapshot.routes[route_index];
    if route.rules.cors.is_some() {
        ex.origin = req.headers().get(header::ORIGIN).cloned();
    }

    // 3. early answers: the route's IP and request rules, then answers given before any
    // credential is asked for.
    if !route.rules.ip_rules.is_empty() || route.rules.edge_rules.is_some() {
        ex.trail.route = Some(route_index);
    }
    if let Some(rule) = snapshot
        .edge
        .ip_rules
        .first_denial(&route.rules.ip_rules, client.ip)
    {
        ex.trail.rule = Some(format!("ip:{}", rule.name).into());
        return Err(Reject::IpDenied(Arc::clone(&rule.name)));
    }
    if let Some(set) = &route.rules.edge_rules {
        if let Some(hit) = set.check(&snapshot.edge.rules, &path, target.query(), req.headers()) {
            edge_rule_hit(hit, &mut ex.trail)?;
        }
    }
    if let Some(answer) = early_answer(route, &req, ex) {
        ex.trail.route = Some(route_index);
        return Ok(answer);
    }
    if by_preflight {
        // Routed only by the method it asks about, and not answered: no route, as before.
        return Err(Reject::NoRoute);
    }
    ex.trail.route = Some(route_index);

    // 4. authenticate: the route's policy yields the principal (or 401).
    let principal = if route.auth.is_none() {
        None
    } else {
        let authority = host_value.as_ref().and_then(|h| h.to_str().ok());
        let input = AuthRequest {
            method: req.method(),
            uri: &target,
            headers: req.headers(),
            authority: authority.unwrap_or(""),
            scheme: conn.scheme,
            has_body: !req.body().is_end_stream(),
            client_cert: conn.client_cert.as_ref(),
        };
        match route.auth.authenticate(&input).await {
            Ok(p) => {
                ex.trail.auth = AuthResult::Success;
                ex.trail.principal = p.clone();
                p
            }
            Err(f) => {
                ex.trail.auth = AuthResult::Failure;
                ex.trail.auth_reason = Some(f.reason.as_str());
                route.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                return Err(Reject::Unauthorized(f));
            }
        }
    };

    // 4b. consumer: the record the credential names (its plan picks `by_plan` limits).
    let consumer = match principal.as_deref() {
        Some(p) => crate::consumer::of_principal(p, &snapshot.consumers)
            .await
            .inspect_err(|e| {
                // 403: a suspended consumer (an authorization denial); else the store could
                // not be read (503, or 401 by its on_store_failure).
                if e.status() == http::StatusCode::FORBIDDEN {
                    ex.trail.auth = AuthResult::Denied;
                    route.metrics.authz_denials.fetch_add(1, Ordering::Relaxed);
                } else {
                    ex.trail.auth = AuthResult::Failure;
                }
            })?,
        None => None,
    };
    ex.trail.consumer.clone_from(&consumer);

    // 4c. tenant: the `{tenant}` host's label, else the credential's (a mismatch is refused).
    // Owned (only on routes with `{tenant}` hosts): the host's header value moves upstream.
    let host_tenant = host_tenant(&route.rules.tenant_suffixes, &host).map(str::to_owned);
    let tenant = snapshot
        .tenants
        .of_request(host_tenant.as_deref(), principal.as_deref())
        .map_err(|r| {
            ex.trail.auth = AuthResult::Denied;
            route.metrics.authz_denials.fetch_add(1, Ordering::Relaxed);
            Reject::Tenant(r)
        })?;
    if let Some(t) = tenant {
        snapshot.tenants.count(t);
        // Kept (one allocation) only for what reads it after the request is gone.
        if snapshot.sinks.access_log.is_some()
            || snapshot.sinks.spans.is_some()
            || route.rules.response_headers.is_templated()
        {
            ex.trail.tenant = Some(Arc::from(t));
        }
    }

    // 5. authorize: required scopes and claims, the tenant's status (or 403).
    if let Some(rules) = &route.rules.authorize {
        if let Err(denied) = rules.check(principal.as_deref()) {
            ex.trail.auth = AuthResult::Denied;
            route.metrics.authz_denials.fetch_add(1, Ordering::Relaxed);
            return Err(Reject::Forbidden(denied));
        }
        if let Some(allowed) = &rules.tenant_status {
            let checked = snapshot.tenants.check_status(tenant, allowed).await;
            if let Err(r) = checked {
                if r != crate::tenant::TenantRefusal::Unavailable {
                    ex.trail.auth = AuthResult::Denied;
                    route.metrics.authz_denials.fetch_add(1, Ordering::Relaxed);
                }
                return Err(Reject::Tenant(r));
            }
        }
    }

    // 6. rate limit: every limit the route applies, in order, then the consumer's plan's.
    if !route.rate_limits.is_empty() {
        let plan = route.rate_limits.plan_for(consumer.as_deref());
        if let Some(p) = plan {
            ex.trail.plan = Some(Arc::clone(&p.name));
        }
        let input = KeyInput {
            route: &route.rules.name,
            client_ip: &client.text,
            headers: req.headers(),
            principal: principal.as_deref(),
            consumer: consumer.as_deref(),
            tenant,
        };
        match route
            .rate_limits
            .check(&input, plan, &mut ex.trail.rate_limit)
            .await
        {
            Ok(h) => ex.rate_headers = Some(h),
            Err(Refusal::Limited { limit, headers }) => {
                route.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(Reject::RateLimited(limit, Box::new(headers)));
            }
            Err(Refusal::StoreUnavailable { limit }) => {
                return Err(Reject::RateLimitStoreDown(limit))
            }
        }
    }

    // 7. validate request: required headers, content type, declared body size; then the
    // request-body filters.
    let has_body = !req.body().is_end_stream();
    let content_length = req.body().size_hint().exact();
    let body_plan =
        route
            .rules
            .request
            .check(req.method(), req.headers(), has_body, content_length)?;
    ex.trail.bytes_in = content_length.unwrap_or(0);
    // A body held whole is read now (boxed: a rare path whose future would otherwise enlarge
    // every request's), so a schema refusal or a direct response never waits on phase 10.
    let held_body = match body_plan {
        BodyPlan::Buffer(limit) => {
            let deadline = tokio::time::Instant::now() + route.rules.timeout;
            let data = Box::pin(read_whole(req.body_mut(), limit, deadline)).await?;
            ex.trail.bytes_in = data.as_ref().map_or(0, |b| b.len() as u64);
            route
                .rules
                .request
                .check_body(req.method(), data.as_ref())?;
            Some(data)
        }
        _ => None,
    };
    let request_filters = request_body_filters(route, principal.as_deref(), has_body)
        .inspect_err(|_| record_body_auth_failure(route, ex))?;
    // Negotiated now, used in phase 13.
    let coding = route
        .rules
        .compression
        .as_ref()
        .and_then(|c| c.negotiate(req.headers()).map(|codec| (c, codec)));
    let head_request = req.method() == Method::HEAD;

    // 8. cache lookup: a usable entry answers; a miss may wait on a fill already under way.
    let url = UrlParts {
        scheme: conn.scheme,
        host: &host,
        path: &path,
        query: target.query(),
    };
    let invalidation = Invalidation::for_request(req.method(), &url, &snapshot.cache);
    let mut cached = None;
    // A WebSocket handshake is never answered from (or stored in) the cache.
    if let Some(rc) = route.cache.as_ref().filter(|_| upgrade.is_none()) {
        let lookup = LookupRequest {
            method: req.method(),
            url,
            headers: req.headers(),
            principal: principal.as_deref(),
        };
        match crate::cache::lookup(rc, &snapshot.cache, &route.metrics.cache, lookup).await? {
            Lookup::Answer(resp, status) => {
                ex.cache = Some(status);
                ex.from_upstream = true;
                ex.from_cache = true;
                return Ok(response_body_filters(resp, route, coding, head_request));
            }
            Lookup::Forward(pending) => cached = Some(pending),
        }
    }

    // 9. direct responses are answered here.
    let upstream_index = match &route.rules.action {
        Action::Direct(d) => return Ok(d.respond()),
        Action::Redirect(r) => {
            return Ok(r.respond(&crate::policy::redirect::Requested {
                scheme: conn.scheme,
                authority: host_value
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(""),
                path: &path,
                query: target.query(),
            }))
        }
        Action::Upstream(u) => *u,
        Action::Split(split) => split.pick(req.headers(), &client.text),
    };

    // 10. transform request: path rewrite, header rules, forwarding headers, body plan.
    let upstream_path = match &route.rules.rewrite {
        Some(rw) => Cow::Owned(rw.apply(&path)),
        None => path,
    };
    let uri = upstream_path_and_query(&upstream_path, &target)?;
    let (mut parts, incoming) = req.into_parts();
    let body = match body_plan {
        BodyPlan::None => UpstreamBody::empty(),
        BodyPlan::Stream => UpstreamBody::Streaming {
            inner: incoming,
            limit: route.rules.request.max_body_bytes,
            seen: 0,
            counter: match content_length {
                None => {
                    let c = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    ex.trail.bytes_in_counter = Some(Arc::clone(&c));
                    Some(c)
                }
                Some(_) => None,
            },
        },
        BodyPlan::Buffer(_) => UpstreamBody::Full(held_body.flatten()),
    };
    let body = if request_filters.is_empty() || body.is_end_stream() {
        body
    } else {
        if request_filters.changes_length() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        UpstreamBody::Filtered(Box::new(Filtered::new(body, request_filters)))
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    // Only for templated header rules: what their variables read.
    let templated_host = route
        .rules
        .request_headers
        .is_templated()
        .then(|| host.to_string());
    let template = templated_host.as_deref().map(|host| TemplateInput {
        request_id,
        client_ip: &client.text,
        route: &route.rules.name,
        upstream: Some(&snapshot.upstreams[upstream_index].name),
        host: Some(host),
        principal: principal.as_deref(),
        query: parts.uri.query(),
        tenant,
    });
    prepare_upstream_headers(
        &mut parts.headers,
        conn,
        &client,
        host_value,
        request_id,
        route,
        &body,
    );
    // The route's header rules, after the gateway's own headers.
    route
        .rules
        .request_headers
        .apply(&mut parts.headers, template.as_ref());
    if let Some(u) = &upgrade {
        u.prepare_request(&mut parts.headers);
    }
    set_identity_headers(
        &mut parts.headers,
        snapshot,
        route,
        conn,
        principal.as_deref(),
        tenant,
    );
    if let Some(t) = trace {
        t.apply(&mut parts.headers);
    }
    if let Some((c, _)) = coding {
        c.prepare_request(&mut parts.headers);
    }
    if let Some(p) = &cached {
        p.prepare_request(&mut parts.headers);
    }

    // 11. forward: bulkhead, balancer, breaker, timeouts, retries. A gRPC client's own
    // deadline shortens the route's timeout.
    let timeout = grpc
        .then(|| grpc::deadline(&parts.headers))
        .flatten()
        .map_or(route.rules.timeout, |d| d.min(route.rules.timeout));
    let upstream = &snapshot.upstreams[upstream_index];
    ex.trail.upstream = Some(upstream_index);
    // Injected faults (rehearsal), before anything is sent.
    if let Some(fault) = &route.rules.fault {
        let injected = fault.draw(&parts.headers, &route.metrics.faults);
        if let Some(d) = injected.delay {
            Box::pin(tokio::time::sleep(d)).await;
        }
        if let Some(status) = injected.abort {
            ex.trail.rule = Some("fault:abort".into());
            return Err(Reject::Status(
                status,
                "aborted by the route's fault injection".into(),
            ));
        }
    }
    // A stale entry within stale-while-revalidate answers now; one request refreshes it.
    if let Some(pending) = cached.take_if(|p| p.refresh_in_background()) {
        let answer = pending.stale_answer();
        let snapshot = Arc::clone(snapshot);
        let client = client.text.to_string();
        tokio::spawn(async move {
            let route = &snapshot.routes[route_index];
            let mut trail = Trail::default();
            let result = forward(
                &snapshot.upstreams[upstream_index],
                route.rules.retry.as_ref(),
                timeout,
                parts,
                body,
                &client,
                &mut trail,
            )
            .await;
            if let Some(rc) = &route.cache {
                // What the refresh answers is stored (or freshens the entry), never sent.
                drop(pending.complete(rc, &snapshot.cache, &route.metrics, result, timeout));
            }
        });
        if let Some((resp, status)) = answer {
            ex.cache = Some(status);
            ex.from_upstream = true;
            ex.from_cache = true;
            return Ok(response_body_filters(resp, route, coding, head_request));
        }
        return Err(Reject::UpstreamFailed("stale entry vanished".into()));
    }
    // The fallback gets a copy of a bodiless request's head, and what is left of the timeout
    // (boxed, like its forward below: rare state kept out of every request's future).
    let fallback = route
        .rules
        .fallback
        .as_ref()
        .filter(|_| body.is_end_stream())
        .map(|f| {
            Box::new((
                f,
                copy_head(&parts.method, &parts.uri, parts.version, &parts.headers),
                std::time::Instant::now(),
            ))
        });
    // The mirror's copy starts on its own task; the primary never waits for it.
    let (body, shadow) = match &route.rules.mirror {
        Some(m) => {
            let (body, tap, logged) = m.start(
                &parts,
                body,
                request_id,
                snapshot,
                route_index,
                upstream_index,
                timeout,
                &client.text,
            );
            ex.trail.mirror = Some(logged);
            (body, tap)
        }
        None => (body, None),
    };
    let result = forward(
        upstream,
        route.rules.retry.as_ref(),
        timeout,
        parts,
        body,
        &client.text,
        &mut ex.trail,
    )
    .await;
    // The primary failed: a stale entry answers first (stale-if-error), then the fallback.
    let result = match fallback {
        Some(fb) => {
            let (policy, head, forward_started) = *fb;
            let remaining = timeout.saturating_sub(forward_started.elapsed());
            if policy.applies(&result)
                && !cached.as_ref().is_some_and(|p| p.serves_stale_on_error())
                && !remaining.is_zero()
                && upstream.runtime.budget.withdraw(&upstream.retry_budget)
            {
                route.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = &mut cached {
                    // A degraded answer is not stored in the primary's place.
                    p.forbid_store();
                }
                drop(result);
                ex.trail.upstream = Some(policy.upstream);
                Box::pin(forward(
                    &snapshot.upstreams[policy.upstream],
                    None,
                    remaining,
                    head,
                    UpstreamBody::empty(),
                    &client.text,
                    &mut ex.trail,
                ))
                .await
            } else {
                result
            }
        }
        None => result,
    };
    if let (Ok(r), Some(inv)) = (&result, &invalidation) {
        inv.apply(&snapshot.cache, r.status(), r.headers());
    }
    let result = match (cached, &route.cache) {
        (Some(pending), Some(rc)) => {
            let (r, status) =
                pending.complete(rc, &snapshot.cache, &route.metrics, result, timeout);
            ex.cache = Some(status);
            r
        }
        _ => result.map(|r| r.map(ResponseBody::Upstream)),
    };
    // A compared copy gets the primary's answer (not a fallback's); the body through a tee.
    let result = match shadow.filter(|_| ex.trail.upstream == Some(upstream_index)) {
        Some(tap) => tap.observe(result, ex.trail.target),
        None => result,
    };
    let resp = result.inspect_err(|r| {
        if let Reject::Unauthorized(f) = r {
            ex.trail.auth_reason = Some(f.reason.as_str());
            record_body_auth_failure(route, ex);
        }
    })?;
    ex.from_upstream = true;
    ex.upgrade = upgrade;

    // 13. response-body filters.
    Ok(response_body_filters(resp, route, coding, head_request))
}

/// An edge rule matched: recorded for the log; a refusal ends the request.
fn edge_rule_hit(hit: RuleHit, trail: &mut crate::observe::record::Trail) -> Result<(), Reject> {
    trail.rule = Some(hit.log_value().into());
    if hit.refused {
        return Err(Reject::EdgeRule(Box::new(hit)));
    }
    Ok(())
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) that no route
/// matches by its own method is routed by the method it asks about, then by host, path and
/// headers alone: a route listing only `GET` still answers its preflights (its CORS policy
/// decides which methods to allow).
fn preflight_route(snapshot: &Snapshot, view: &RequestView) -> Option<usize> {
    let requested = preflight_method(view.method, view.headers)?;
    snapshot
        .router
        .route(&RequestView {
            method: &requested,
            ..*view
        })
        .or_else(|| {
            snapshot.router.route(&RequestView {
                any_method: true,
                ..*view
            })
        })
}

/// The method a CORS preflight asks about (Fetch standard: an `OPTIONS` request with `Origin`
/// and `Access-Control-Request-Method`).
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

/// Phase 3, early answers: given before authentication, for requests that must not need
/// credentials. The route's CORS policy answers preflights here (never forwarded); without one,
/// or in report-only mode, a preflight goes on like any request, and one routed only by its
/// requested method finds no route.
fn early_answer(
    route: &LiveRoute,
    req: &Request<Incoming>,
    ex: &mut Exchange,
) -> Option<Response<ResponseBody>> {
    let cors = route.rules.cors.as_ref()?;
    let requested = preflight_method(req.method(), req.headers())?;
    let preflight = cors.preflight(&requested, req.headers(), &route.metrics.cors)?;
    ex.trail.cors = preflight.refused.map(|r| r.log_value(!cors.report_only));
    ex.cors_decided = true;
    preflight.response
}

/// Phase 7: the route's request-body filters, in order (today one: the signed
/// `Content-Digest`). An empty body is checked against its digest here.
fn request_body_filters(
    route: &LiveRoute,
    principal: Option<&Principal>,
    has_body: bool,
) -> Result<FilterChain, Reject> {
    let mut chain = FilterChain::new();
    if let Some((p, expected, counters)) =
        principal.and_then(|p| Some((p, p.body_digest.as_ref()?, p.signature_counters.as_ref()?)))
    {
        if !has_body {
            if !digest::matches(expected, b"") {
                return Err(Reject::Unauthorized(digest::mismatch(
                    &p.provider,
                    counters,
                )));
            }
        } else {
            chain.push(Box::new(digest::DigestFilter::new(
                Arc::clone(expected),
                route.rules.request.max_body_bytes,
                Arc::clone(&p.provider),
                Arc::clone(counters),
            )));
        }
    }
    Ok(chain)
}

/// A body refused after authentication succeeded (its signed digest did not match).
fn record_body_auth_failure(route: &LiveRoute, ex: &mut Exchange) {
    ex.trail.auth = AuthResult::Failure;
    ex.trail
        .auth_reason
        .get_or_insert(crate::auth::Reason::DigestMismatch.as_str());
    route.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
}

/// Phase 13: the route's response-body filters, in their one defined order: JSON shaping
/// (`response.json`) → compression → cache fill (tee) → shadow comparison (tee). Each
/// decides from the response head whether it applies (and adjusts the head for what it does).
///
/// Cache hits pass here too: the cache stores what the upstream sent, so compression applies on
/// the way out, per client, and one entry serves every `Accept-Encoding`. The two tees are put
/// on the upstream's body in phase 11 (the cache fill, then the shadow comparison's), before
/// compression: both must see the bytes the upstream sent.
fn response_body_filters(
    resp: Response<ResponseBody>,
    route: &LiveRoute,
    coding: Option<(&Arc<CompressionPolicy>, Codec)>,
    head_request: bool,
) -> Response<ResponseBody> {
    let shape = route.rules.response_json.as_ref();
    // Most responses have no filter: they are not taken apart at all.
    if coding.is_none() && shape.is_none() {
        return resp;
    }
    let (mut head, body) = resp.into_parts();
    let mut chain = FilterChain::new();
    if let Some(s) = shape {
        let counters = &route.metrics.json_shape;
        if let Some(f) = s.start(head.status, head_request, &mut head.headers, counters) {
            chain.push(f);
        }
    }
    if let Some((policy, codec)) = coding {
        if let Some(f) = policy.start(codec, head_request, &mut head) {
            chain.push(f);
        }
    }
    if chain.is_empty() {
        return Response::from_parts(head, body);
    }
    if chain.changes_length() {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    Response::from_parts(
        head,
        ResponseBody::Filtered(Box::new(Filtered::new(body, chain))),
    )
}

/// Phase 12, response headers, for every response: the upstream's (hop-by-hop headers removed, the
/// route's header rules) and the gateway's own (direct responses, every refusal and failure)
/// alike get the CORS headers, the rate-limit headers, the trace id, the request id and HSTS.
fn response_headers(
    headers: &mut HeaderMap,
    ex: &mut Exchange,
    route: Option<&LiveRoute>,
    snapshot: &Snapshot,
    conn: &ConnContext,
    trace_id: Option<(http::HeaderName, HeaderValue)>,
    request_id: &HeaderValue,
) {
    if ex.from_upstream {
        if !ex.from_cache {
            forwarded::strip_hop_by_hop(headers);
        }
        if let Some(r) = route {
            let ops = &r.rules.response_headers;
            let input = ops.is_templated().then(|| TemplateInput {
                request_id,
                client_ip: ex.trail.client_ip.as_deref().unwrap_or(&conn.client_ip),
                route: &r.rules.name,
                upstream: ex.trail.upstream.map(|u| &*snapshot.upstreams[u].name),
                host: None,
                principal: ex.trail.principal.as_deref(),
                query: None,
                tenant: ex.trail.tenant.as_deref(),
            });
            ops.apply(headers, input.as_ref());
        }
    }
    // A request no route matched answers with the defaults' CORS policy.
    let cors = match route {
        Some(r) => r.rules.cors.as_deref().map(|c| (c, &r.metrics.cors)),
        None => snapshot
            .default_cors
            .as_deref()
            .map(|c| (c, &snapshot.no_route_metrics.cors)),
    };
    if route.is_some_and(|r| r.rules.compression.is_some()) {
        add_vary(headers, "accept-encoding");
    }
    if let (Some(status), Some(rc)) = (&ex.cache, route.and_then(|r| r.cache.as_ref())) {
        for name in &rc.policy.vary {
            add_vary(headers, name.as_str());
        }
        if snapshot.cache.spec.status_header {
            headers.insert(
                crate::cache::CACHE_STATUS,
                status.header_value(&snapshot.cache.spec.name),
            );
        }
        ex.trail.cache = Some(status.log_value());
    }
    if let (Some((policy, counters)), false) = (cors, ex.cors_decided) {
        if let Some(refused) = policy.apply(ex.origin.as_ref(), headers, counters) {
            ex.trail.cors = Some(refused.log_value(!policy.report_only));
        }
    }
    if let Some(h) = &ex.rate_headers {
        h.apply(headers);
    }
    if let Some((name, value)) = trace_id {
        headers.insert(name, value);
    }
    headers.insert(request_id::HEADER, request_id.clone());
    if let Some((name, value)) = &snapshot.instance_header {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(hsts) = &conn.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

/// Identity headers only ever come from the gateway: client copies of claim headers and
/// client-certificate headers are removed on every route, then set from what was verified.
/// Credentials the route's auth read stay at the gateway.
fn set_identity_headers(
    headers: &mut http::HeaderMap,
    snapshot: &Snapshot,
    route: &LiveRoute,
    conn: &ConnContext,
    principal: Option<&crate::auth::Principal>,
    tenant: Option<&str>,
) {
    let tenant_header = snapshot.tenants.spec().forward_header();
    for h in snapshot
        .forwarded_headers
        .iter()
        .chain(&route.credential_headers)
        .chain(&CLIENT_CERT_HEADERS)
        .chain(std::iter::once(tenant_header))
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
    // After the claims: the request's tenant is the one the gateway decided.
    if let Some(v) = tenant.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(tenant_header.clone(), v);
    }
}

/// The label a `{tenant}.suffix` host captured, when the route has such hosts and the
/// request's host is under one of them.
fn host_tenant<'h>(suffixes: &[String], host: &'h str) -> Option<&'h str> {
    if suffixes.is_empty() {
        return None;
    }
    let (label, suffix) = crate::router::tenant_label(host)?;
    suffixes.iter().any(|s| s == suffix).then_some(label)
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
        route: trail
            .route
            .map(|r| Arc::clone(&snapshot.routes[r].rules.name)),
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
        client_ip: trail
            .client_ip
            .take()
            .unwrap_or_else(|| Arc::clone(&conn.client_ip)),
        auth_result: trail.auth.as_str(),
        auth_reason: trail.auth_reason,
        principal: trail.principal.take(),
        rate_limit: trail.rate_limit,
        retries: trail.retries,
        retry_events: std::mem::take(&mut trail.retry_events),
        cors: trail.cors,
        cache: trail.cache,
        mirror: trail.mirror,
        consumer: trail.consumer.take(),
        tenant: trail.tenant.take(),
        plan: trail.plan.take(),
        rule: trail.rule.take(),
    }
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

/// The host the client asked for, as sent: the :authority of h2 and absolute-form requests,
/// else the (checked) Host header.
fn request_host(req: &Request<Incoming>, host_header: Option<HeaderValue>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    host_header
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

fn prepare_upstream_headers(
    headers: &mut http::HeaderMap,
    conn: &ConnContext,
    client: &ClientAddr,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    route: &LiveRoute,
    body: &UpstreamBody,
) {
    // The route's allow- and deny-lists see only what the client sent.
    route.rules.request.filter_client_headers(headers);
    forwarded::strip_hop_by_hop(headers);
    // The gateway answers `Expect: 100-continue` itself when it reads the body.
    headers.remove(header::EXPECT);
    forwarded::set_forwarded(headers, client, &conn.client_ip, conn.scheme, host.as_ref());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflights_are_told_apart_from_other_options_requests() {
        let mut h = HeaderMap::new();
        assert_eq!(preflight_method(&Method::OPTIONS, &h), None);
        h.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert_eq!(
            preflight_method(&Method::OPTIONS, &h),
            None,
            "no requested method"
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "PUT".parse().unwrap(),
        );
        assert_eq!(preflight_method(&Method::OPTIONS, &h), Some(Method::PUT));
        assert_eq!(preflight_method(&Method::GET, &h), None, "only OPTIONS");
    }
}
