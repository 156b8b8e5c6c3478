//! The admin API, on its own listener: health probes, the running config's identity, the
//! compiled routes, and reload.

use crate::body::ResponseBody;
use crate::gateway::Gateway;
use crate::reject::{json_error, json_response};
use crate::request_id;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let gw = Arc::clone(&gateway);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move { Ok::<_, Infallible>(handle(req, &gw).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    let presented = crate::auth::bearer(req.headers()).unwrap_or("");
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

pub async fn handle(req: Request<Incoming>, gateway: &Arc<Gateway>) -> Response<ResponseBody> {
    let request_id = request_id::for_request(req.headers());
    let snapshot = gateway.snapshot();
    let path = req.uri().path();
    let is_health = path.starts_with("/health/");
    let mut resp = if !is_health && !authorized(&req, snapshot.admin_token.as_deref()) {
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "admin token required",
            &request_id,
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    } else {
        match (req.method(), path) {
            (&Method::GET, "/health/live") => {
                json_response(StatusCode::OK, &json!({"status": "live"}))
            }
            (&Method::GET, "/health/ready") => {
                if gateway.is_ready() {
                    json_response(
                        StatusCode::OK,
                        &json!({"status": "ready", "config_version": snapshot.version}),
                    )
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "starting"}),
                    )
                }
            }
            (&Method::GET, "/admin/config-version") => {
                json_response(StatusCode::OK, &config_version_document(gateway, &snapshot))
            }
            (&Method::GET, "/admin/routes") => json_response(StatusCode::OK, &snapshot.routes_json),
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(ResponseBody::full(render_metrics(gateway, &snapshot)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::GET, "/admin/access-log") => {
                use std::sync::atomic::Ordering::Relaxed;
                let doc = match &snapshot.sinks.access_log {
                    Some(log) => json!({
                        "enabled": true,
                        "destination": log.config.destination,
                        "written": log.written.load(Relaxed),
                        "dropped": log.dropped.load(Relaxed),
                        "sampled_out": log.sampled_out.load(Relaxed),
                    }),
                    None => json!({"enabled": false}),
                };
                json_response(StatusCode::OK, &doc)
            }
            (&Method::GET, "/admin/upstreams") => {
                json_response(StatusCode::OK, &upstreams_document(&snapshot))
            }
            (&Method::POST, "/admin/reload") => match gateway.reload().await {
                Ok(applied) => {
                    tracing::info!(
                        version = applied.version,
                        changed = applied.changed,
                        "config reloaded via admin API"
                    );
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "status": if applied.changed { "reloaded" } else { "unchanged" },
                            "config_version": applied.version,
                            "checksum": applied.checksum,
                        }),
                    )
                }
                Err(errors) => {
                    tracing::warn!(errors = %errors, "config reload refused; the running config keeps serving");
                    let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                    json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({
                            "error": "config rejected; the running config keeps serving",
                            "errors": list,
                            "config_version": snapshot.version,
                            "request_id": request_id.to_str().unwrap_or_default(),
                        }),
                    )
                }
            },
            (
                _,
                "/health/live"
                | "/health/ready"
                | "/admin/config-version"
                | "/admin/routes"
                | "/admin/reload",
            ) => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                &request_id,
            ),
            _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint", &request_id),
        }
    };
    resp.headers_mut().insert(request_id::HEADER, request_id);
    resp
}

/// `GET /admin/config-version`: the running snapshot and, for a gateway following the store,
/// the store version and whether it runs from its last-known-good file.
fn config_version_document(
    gateway: &Gateway,
    snapshot: &crate::snapshot::Snapshot,
) -> serde_json::Value {
    let mut doc = json!({
        "config_version": snapshot.version,
        "loaded_at": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        "checksum": snapshot.checksum,
        "source": if gateway.store_status.get().is_some() { "store" } else { "file" },
    });
    if let Some(s) = gateway.store_status.get() {
        use std::sync::atomic::Ordering::Relaxed;
        let version = s.version.load(Relaxed);
        doc["store_version"] = json!((version > 0).then_some(version));
        doc["last_known_good"] = json!(s.last_known_good.load(Relaxed));
        doc["store_reachable"] = json!(s.up.load(Relaxed));
        if let Some((v, e)) = s.failed() {
            doc["failed_store_version"] = json!({ "version": v, "errors": e });
        }
    }
    doc
}

/// `GET /admin/upstreams`: every upstream's bulkhead and retry counters and, per target, health,
/// breaker state, requests in flight and error counts.
fn upstreams_document(snapshot: &crate::snapshot::Snapshot) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let now = tokio::time::Instant::now();
    let upstreams: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|u| {
            let targets: Vec<serde_json::Value> = u
                .targets
                .iter()
                .map(|t| {
                    let requests = t.state.requests.load(Relaxed);
                    let failures = t.state.failures.load(Relaxed);
                    let breaker = u.breaker.as_ref().map(|cfg| {
                        let (state, transitions) = t.state.breaker.state(cfg, now);
                        json!({"state": state.as_str(), "transitions": transitions})
                    });
                    json!({
                        "address": t.pool.authority().as_str(),
                        "weight": t.weight,
                        "healthy": t.state.is_healthy(),
                        "health_checked": t.state.checked.load(Relaxed),
                        "breaker": breaker,
                        "in_flight": t.state.in_flight.load(Relaxed),
                        "idle_connections": t.pool.idle_count(),
                        "requests": requests,
                        "failures": failures,
                        "error_rate": if requests == 0 { 0.0 } else { failures as f64 / requests as f64 },
                    })
                })
                .collect();
            json!({
                "name": &*u.name,
                "in_flight": u.runtime.in_flight.load(Relaxed),
                "max_concurrent_requests": u.max_concurrent_requests,
                "bulkhead_rejections": u.runtime.bulkhead_rejections.load(Relaxed),
                "retries": u.runtime.retries.load(Relaxed),
                "retries_denied_by_budget": u.runtime.retries_denied_by_budget.load(Relaxed),
                "targets": targets,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

/// `GET /metrics`: request series recorded on the request path plus live state read now.
fn render_metrics(gateway: &Gateway, snapshot: &crate::snapshot::Snapshot) -> String {
    use crate::observe::metrics::{family, label};
    use crate::upstream::breaker::BreakerState;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(16 * 1024);
    gateway.metrics.render_requests(&mut out);
    family(
        &mut out,
        "portcullis_requests_in_flight",
        "gauge",
        "Requests being handled.",
        &[(
            String::new(),
            gateway.metrics.in_flight.load(Relaxed) as f64,
        )],
    );
    if let Some(s) = gateway.store_status.get() {
        let one = |v: f64| [(String::new(), v)];
        family(
            &mut out,
            "portcullis_config_store_up",
            "gauge",
            "1 when the config store answered the last poll.",
            &one(f64::from(u8::from(s.up.load(Relaxed)))),
        );
        family(
            &mut out,
            "portcullis_config_store_errors_total",
            "counter",
            "Polls or heartbeats the config store did not answer.",
            &one(s.errors.load(Relaxed) as f64),
        );
        family(
            &mut out,
            "portcullis_config_store_version",
            "gauge",
            "The store version this instance runs.",
            &one(s.version.load(Relaxed) as f64),
        );
        family(
            &mut out,
            "portcullis_config_last_known_good",
            "gauge",
            "1 while running from the last-known-good file.",
            &one(f64::from(u8::from(s.last_known_good.load(Relaxed)))),
        );
        family(
            &mut out,
            "portcullis_config_store_apply_failures_total",
            "counter",
            "Store versions this instance refused (invalid for it).",
            &one(s.apply_failures.load(Relaxed) as f64),
        );
    }
    let now = tokio::time::Instant::now();
    let per_upstream =
        |f: &dyn Fn(&crate::upstream::CompiledUpstream) -> f64| -> Vec<(String, f64)> {
            snapshot
                .upstreams
                .iter()
                .map(|u| (label("upstream", &u.name), f(u)))
                .collect()
        };
    family(
        &mut out,
        "portcullis_upstream_retries_total",
        "counter",
        "Retries sent, by upstream.",
        &per_upstream(&|u| u.runtime.retries.load(Relaxed) as f64),
    );
    family(
        &mut out,
        "portcullis_upstream_retries_denied_total",
        "counter",
        "Retries refused by the retry budget, by upstream.",
        &per_upstream(&|u| u.runtime.retries_denied_by_budget.load(Relaxed) as f64),
    );
    family(
        &mut out,
        "portcullis_upstream_bulkhead_rejections_total",
        "counter",
        "Requests refused by the upstream's max_concurrent_requests.",
        &per_upstream(&|u| u.runtime.bulkhead_rejections.load(Relaxed) as f64),
    );
    family(
        &mut out,
        "portcullis_upstream_requests_in_flight",
        "gauge",
        "Requests in flight to the upstream.",
        &per_upstream(&|u| u.runtime.in_flight.load(Relaxed) as f64),
    );

    let mut healthy = Vec::new();
    let mut breaker = Vec::new();
    let mut transitions = Vec::new();
    let mut pool = Vec::new();
    let mut created = Vec::new();
    for u in &snapshot.upstreams {
        for t in &u.targets {
            let labels = format!(
                "{},{}",
                label("upstream", &u.name),
                label("target", t.pool.authority().as_str())
            );
            healthy.push((labels.clone(), if t.state.is_healthy() { 1.0 } else { 0.0 }));
            if let Some(cfg) = &u.breaker {
                let (state, n) = t.state.breaker.state(cfg, now);
                for s in [
                    BreakerState::Closed,
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                ] {
                    breaker.push((
                        format!("{labels},{}", label("state", s.as_str())),
                        if s == state { 1.0 } else { 0.0 },
                    ));
                }
                transitions.push((labels.clone(), n as f64));
            }
            pool.push((
                format!("{labels},state=\"idle\""),
                t.pool.idle_count() as f64,
            ));
            pool.push((
                format!("{labels},state=\"in_use\""),
                t.state.in_flight.load(Relaxed) as f64,
            ));
            created.push((labels, t.pool.created.load(Relaxed) as f64));
        }
    }
    family(
        &mut out,
        "portcullis_target_healthy",
        "gauge",
        "1 when the target passes its health checks (or has none).",
        &healthy,
    );
    family(
        &mut out,
        "portcullis_breaker_state",
        "gauge",
        "Circuit breaker state by target (1 for the current state).",
        &breaker,
    );
    family(
        &mut out,
        "portcullis_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes by target.",
        &transitions,
    );
    family(
        &mut out,
        "portcullis_pool_connections",
        "gauge",
        "Upstream connections by target and state.",
        &pool,
    );
    family(
        &mut out,
        "portcullis_pool_connections_created_total",
        "counter",
        "Upstream connections opened by target.",
        &created,
    );
    if !snapshot.auth_stats.is_empty() {
        let mut failures = Vec::new();
        let mut successes = Vec::new();
        let mut fetches = Vec::new();
        for p in &snapshot.auth_stats {
            for r in crate::auth::Reason::ALL {
                let n = p.counters.failures(r);
                failures.push((
                    format!(
                        "{},{}",
                        label("provider", &p.name),
                        label("reason", r.as_str())
                    ),
                    n as f64,
                ));
            }
            successes.push((
                label("provider", &p.name),
                p.counters.successes.load(Relaxed) as f64,
            ));
            if let Some(j) = &p.jwks {
                for (result, n) in [("ok", &j.fetches_ok), ("failed", &j.fetches_failed)] {
                    fetches.push((
                        format!("{},{}", label("provider", &p.name), label("result", result)),
                        n.load(Relaxed) as f64,
                    ));
                }
            }
        }
        family(
            &mut out,
            "portcullis_auth_failures_total",
            "counter",
            "Failed authentications (401) by provider and reason.",
            &failures,
        );
        family(
            &mut out,
            "portcullis_auth_successes_total",
            "counter",
            "Successful authentications by provider.",
            &successes,
        );
        if !fetches.is_empty() {
            family(
                &mut out,
                "portcullis_jwks_fetches_total",
                "counter",
                "JWKS fetches by provider and result (a failed fetch keeps the last good keys).",
                &fetches,
            );
        }
    }
    if !snapshot.limiters.is_empty() {
        let mut decisions = Vec::new();
        let mut keys = Vec::new();
        for l in &snapshot.limiters {
            let c = &l.counters;
            for (result, n) in [
                ("allowed", &c.allowed),
                ("limited", &c.limited),
                ("shadow_limited", &c.shadow_limited),
                ("store_failure_allowed", &c.failure_allowed),
                ("store_failure_denied", &c.failure_denied),
                ("store_failure_fallback", &c.failure_fallback),
            ] {
                decisions.push((
                    format!("{},{}", label("limit", &l.name), label("result", result)),
                    n.load(Relaxed) as f64,
                ));
            }
            keys.push((label("limit", &l.name), l.local_keys() as f64));
        }
        family(
            &mut out,
            "portcullis_ratelimit_decisions_total",
            "counter",
            "Rate-limit decisions by limit and result (store_failure_*: Redis unusable, what happened instead).",
            &decisions,
        );
        family(
            &mut out,
            "portcullis_ratelimit_local_keys",
            "gauge",
            "Keys held in this instance's memory by limit (local store or Redis fallback).",
            &keys,
        );
    }
    if let Some(redis) = &snapshot.redis {
        family(
            &mut out,
            "portcullis_ratelimit_store_up",
            "gauge",
            "1 while Redis is used for rate limits, 0 while its breaker skips it.",
            &[(label("store", "redis"), f64::from(u8::from(redis.is_up())))],
        );
        family(
            &mut out,
            "portcullis_ratelimit_store_errors_total",
            "counter",
            "Failed or timed-out Redis calls.",
            &[(label("store", "redis"), redis.errors.load(Relaxed) as f64)],
        );
    }
    if let Some(spans) = &snapshot.sinks.spans {
        let s = &spans.stats;
        family(
            &mut out,
            "portcullis_otlp_spans_total",
            "counter",
            "Spans handed to the OTLP exporter, by result.",
            &by_result(&[
                ("exported", &s.exported),
                ("dropped_queue_full", &s.dropped_queue_full),
                ("dropped_export_failed", &s.dropped_export_failed),
            ]),
        );
        family(
            &mut out,
            "portcullis_otlp_export_requests_total",
            "counter",
            "OTLP export requests by result.",
            &by_result(&[("ok", &s.requests_ok), ("failed", &s.requests_failed)]),
        );
    }
    if let Some(log) = &snapshot.sinks.access_log {
        family(
            &mut out,
            "portcullis_access_log_lines_total",
            "counter",
            "Access log lines by result.",
            &by_result(&[
                ("written", &log.written),
                ("dropped", &log.dropped),
                ("sampled_out", &log.sampled_out),
            ]),
        );
    }
    family(
        &mut out,
        "portcullis_config_info",
        "gauge",
        "The running config version and checksum.",
        &[(
            format!(
                "{},{}",
                label("version", &snapshot.version.to_string()),
                label("checksum", &snapshot.checksum)
            ),
            1.0,
        )],
    );
    family(
        &mut out,
        "portcullis_config_version",
        "gauge",
        "The running config version.",
        &[(String::new(), snapshot.version as f64)],
    );
    family(
        &mut out,
        "portcullis_build_info",
        "gauge",
        "Build information.",
        &[(label("version", env!("CARGO_PKG_VERSION")), 1.0)],
    );
    out
}

/// Samples labelled `result="…"`, one per counter.
fn by_result(counters: &[(&str, &std::sync::atomic::AtomicU64)]) -> Vec<(String, f64)> {
    counters
        .iter()
        .map(|(result, n)| {
            (
                crate::observe::metrics::label("result", result),
                n.load(std::sync::atomic::Ordering::Relaxed) as f64,
            )
        })
        .collect()
}
