//! The admin API, on its own listener: health probes, the running config's identity, the
//! compiled routes, and reload.

pub mod dashboard;
pub mod metrics;
pub mod series;
pub mod spec;

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

/// What the admin API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Live,
    Ready,
    ConfigVersion,
    Routes,
    Metrics,
    AccessLog,
    Upstreams,
    Reload,
    Series,
    Cache,
    CachePurge,
    Shadow,
    Dashboard(dashboard::Asset),
}

/// Every admin path with the one method it answers. A known path with another method gets
/// 405 (with `Allow`), an unknown path 404. `/health/*` needs no token.
const ENDPOINTS: [(&str, Method, Endpoint); 16] = [
    ("/health/live", Method::GET, Endpoint::Live),
    ("/health/ready", Method::GET, Endpoint::Ready),
    (
        "/admin/config-version",
        Method::GET,
        Endpoint::ConfigVersion,
    ),
    ("/admin/routes", Method::GET, Endpoint::Routes),
    ("/metrics", Method::GET, Endpoint::Metrics),
    ("/admin/access-log", Method::GET, Endpoint::AccessLog),
    ("/admin/upstreams", Method::GET, Endpoint::Upstreams),
    ("/admin/reload", Method::POST, Endpoint::Reload),
    ("/admin/series", Method::GET, Endpoint::Series),
    ("/admin/cache", Method::GET, Endpoint::Cache),
    ("/admin/cache/purge", Method::POST, Endpoint::CachePurge),
    ("/admin/shadow", Method::GET, Endpoint::Shadow),
    (
        "/dashboard",
        Method::GET,
        Endpoint::Dashboard(dashboard::Asset::Page),
    ),
    (
        "/dashboard/app.js",
        Method::GET,
        Endpoint::Dashboard(dashboard::Asset::Script),
    ),
    (
        "/dashboard/app.css",
        Method::GET,
        Endpoint::Dashboard(dashboard::Asset::Style),
    ),
    (
        "/dashboard/icon.svg",
        Method::GET,
        Endpoint::Dashboard(dashboard::Asset::Icon),
    ),
];

pub async fn handle(req: Request<Incoming>, gateway: &Arc<Gateway>) -> Response<ResponseBody> {
    let request_id = request_id::for_request(req.headers());
    let snapshot = gateway.snapshot();
    let path = req.uri().path();
    let entry = ENDPOINTS.iter().find(|(p, _, _)| *p == path);
    let is_dashboard = matches!(entry, Some((_, _, Endpoint::Dashboard(_))));
    if is_dashboard && !snapshot.dashboard {
        let mut r = json_error(
            StatusCode::NOT_FOUND,
            "the dashboard is turned off (admin.dashboard: false)",
            &request_id,
        );
        r.headers_mut().insert(request_id::HEADER, request_id);
        return r;
    }
    // Health probes and the dashboard's static files need no token; the page asks for it.
    let public = path.starts_with("/health/") || is_dashboard;
    let mut resp = if !public && !authorized(&req, snapshot.admin_token.as_deref()) {
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
        match entry {
            None if path.starts_with(CONSUMERS) => {
                consumer(req.method(), path, &snapshot, &request_id).await
            }
            None => json_error(StatusCode::NOT_FOUND, "no such admin endpoint", &request_id),
            Some((_, method, _)) if method != req.method() => {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed",
                    &request_id,
                );
                if let Ok(allow) = header::HeaderValue::from_str(method.as_str()) {
                    r.headers_mut().insert(header::ALLOW, allow);
                }
                r
            }
            Some((_, _, Endpoint::CachePurge)) => cache_purge(req, &snapshot, &request_id).await,
            Some((_, _, endpoint)) => {
                answer(
                    *endpoint,
                    req.uri().query(),
                    gateway,
                    &snapshot,
                    &request_id,
                )
                .await
            }
        }
    };
    resp.headers_mut().insert(request_id::HEADER, request_id);
    resp
}

/// `GET /admin/consumers/<id>`: the one admin path with a parameter.
const CONSUMERS: &str = "/admin/consumers/";

async fn consumer(
    method: &Method,
    path: &str,
    snapshot: &crate::snapshot::Snapshot,
    request_id: &header::HeaderValue,
) -> Response<ResponseBody> {
    if method != Method::GET {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            request_id,
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    let raw = &path[CONSUMERS.len()..];
    let id = String::from_utf8(crate::router::normalize::percent_decode(raw, false));
    match id {
        Ok(id) if !id.is_empty() && !id.contains('/') => {
            match crate::consumer::admin::document(snapshot, &id).await {
                Ok(doc) => json_response(StatusCode::OK, &doc),
                Err((status, message)) => json_error(status, &message, request_id),
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such consumer", request_id),
    }
}

/// `POST /admin/cache/purge` with a JSON body (at most 64 KiB).
async fn cache_purge(
    req: Request<Incoming>,
    snapshot: &crate::snapshot::Snapshot,
    request_id: &header::HeaderValue,
) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let body = match tokio::time::timeout(Duration::from_secs(10), limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "purge request body unreadable or larger than 64 KiB",
                request_id,
            )
        }
    };
    use crate::cache::admin::PurgeError;
    match crate::cache::admin::purge(&snapshot.cache, &body, snapshot.allow_encoded_slashes).await {
        Ok(doc) => json_response(StatusCode::OK, &doc),
        Err(PurgeError::Bad(e)) => json_error(StatusCode::BAD_REQUEST, &e, request_id),
        Err(PurgeError::SharedTier(e)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e, request_id)
        }
    }
}

async fn answer(
    endpoint: Endpoint,
    query: Option<&str>,
    gateway: &Arc<Gateway>,
    snapshot: &crate::snapshot::Snapshot,
    request_id: &header::HeaderValue,
) -> Response<ResponseBody> {
    match endpoint {
        Endpoint::Live => json_response(StatusCode::OK, &json!({"status": "live"})),
        Endpoint::Ready => {
            if gateway.is_draining() {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining", "config_version": snapshot.version}),
                )
            } else if gateway.is_ready() {
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
        Endpoint::ConfigVersion => {
            json_response(StatusCode::OK, &config_version_document(gateway, snapshot))
        }
        Endpoint::Routes => json_response(StatusCode::OK, &snapshot.routes_json),
        Endpoint::Metrics => {
            let mut r = Response::new(ResponseBody::full(metrics::render(gateway, snapshot)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Endpoint::AccessLog => {
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
        Endpoint::Upstreams => json_response(StatusCode::OK, &upstreams_document(snapshot)),
        Endpoint::Series => {
            let since = query.and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .and_then(|v| v.parse::<u64>().ok())
            });
            json_response(StatusCode::OK, &gateway.series.document(since))
        }
        Endpoint::Cache => json_response(
            StatusCode::OK,
            &crate::cache::admin::document(&snapshot.cache, &gateway.metrics.routes()),
        ),
        Endpoint::Shadow => {
            let route = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("route=")));
            json_response(
                StatusCode::OK,
                &crate::shadow::admin::document(snapshot, route),
            )
        }
        // Answered in `handle` (it reads the request body).
        Endpoint::CachePurge => {
            json_error(StatusCode::NOT_FOUND, "no such admin endpoint", request_id)
        }
        Endpoint::Dashboard(asset) => dashboard::serve(asset),
        Endpoint::Reload => match gateway.reload().await {
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
    }
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
        "last_reload": gateway.last_reload().map(|r| json!({
            "at": humantime::format_rfc3339_seconds(r.at).to_string(),
            "result": r.result,
            "config_version": r.version,
            "errors": r.errors,
        })),
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

/// An earlier instant of the monotonic clock as RFC 3339 wall-clock time.
fn wall_clock(now: tokio::time::Instant, at: tokio::time::Instant) -> String {
    let then = std::time::SystemTime::now() - now.saturating_duration_since(at);
    humantime::format_rfc3339_millis(then).to_string()
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
                        let s = t.state.breaker.status(cfg, now);
                        json!({
                            "state": s.state.as_str(),
                            "transitions": s.transitions,
                            "changed_at": s.changed_at.map(|at| wall_clock(now, at)),
                        })
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
