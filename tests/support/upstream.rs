//! The test upstream: a real HTTP server the gateway proxies to (behaviours by path are listed
//! on `Upstream`), and two misbehaving stand-ins: one that closes every connection, and a port
//! with nothing listening.

use super::*;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A real HTTP/1.1 + h2c upstream on 127.0.0.1 (or TLS with `start_tls`). Every request's
/// body is read to the end as a stream (counted, never held) and recorded in `seen`; a body
/// the client aborts gets 400 `body aborted`. Behaviour by path:
///
/// | path | answer |
/// |---|---|
/// | `/status/N` | status N, body `status N` |
/// | `/sleep/MS` | waits MS milliseconds, then 200 `slept` |
/// | `/download/BYTES` | 200 with `Content-Length: BYTES`, streamed in 64 KiB chunks of `x` |
/// | `/trailers` | 200 `payload` then trailers `grpc-status: 0`, `grpc-message: ok` |
/// | `/body/KIND` | the JSON document of `json_document()` as: `json` (strong `ETag: "v1"`, 304 to exactly `If-None-Match: "v1"`), `chunked-json` (three chunks, no length), `encoded` (`Content-Encoding: gzip`), `range` (206), `no-transform`, `tiny` (`{"ok":true}`), `png` (as `image/png`) |
/// | `/upstream-cors` | 200 with its own `Access-Control-Allow-Origin: *` and `Vary: Accept-Language` |
/// | anything else | 200 JSON echo: `upstream`, `method`, `uri`, `headers`, `body_bytes` |
///
/// Every response carries `x-upstream: NAME` (and keep-alive headers, which the gateway must
/// remove). `start_with` delays every answer; the counters below say what arrived.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests whose body was read to the end.
    pub completed_uploads: Arc<AtomicU64>,
    /// Requests that arrived (counted before the body is read).
    pub arrivals: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicU64>,
    /// TCP connections currently open.
    pub open_connections: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), Duration::ZERO).await
    }

    /// An upstream on `addr` (port 0: any) that delays every answer by `delay`.
    pub async fn start_with(name: &str, addr: SocketAddr, delay: Duration) -> Upstream {
        Self::spawn(name, addr, delay, None).await
    }

    /// An upstream that speaks HTTP/1.1 and h2 over TLS (chosen by ALPN) with `config`.
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::spawn(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
            Some(acceptor),
        )
        .await
    }

    async fn spawn(
        name: &str,
        addr: SocketAddr,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let up = Upstream {
            addr,
            name: name.to_string(),
            seen: Arc::new(Mutex::new(Vec::new())),
            completed_uploads: Arc::new(AtomicU64::new(0)),
            arrivals: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicU64::new(0)),
            open_connections: Arc::new(AtomicU64::new(0)),
            stop,
        };
        let connections = up.connections.clone();
        let open_connections = up.open_connections.clone();
        let (seen, uploads, arrivals, name) = (
            up.seen.clone(),
            up.completed_uploads.clone(),
            up.arrivals.clone(),
            up.name.clone(),
        );
        let mut stop_accept = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop_accept.changed() => return,
                };
                let Ok((stream, _)) = accepted else {
                    return;
                };
                let mut stop_conn = stop_rx.clone();
                connections.fetch_add(1, Ordering::SeqCst);
                open_connections.fetch_add(1, Ordering::SeqCst);
                let open_connections = open_connections.clone();
                let (seen, uploads, arrivals, name) = (
                    seen.clone(),
                    uploads.clone(),
                    arrivals.clone(),
                    name.clone(),
                );
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (seen, uploads, arrivals, name) = (
                            seen.clone(),
                            uploads.clone(),
                            arrivals.clone(),
                            name.clone(),
                        );
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(
                                upstream_handle(req, seen, uploads, arrivals, name).await,
                            )
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Stopping the upstream drops its connections mid-flight, like a crash.
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop_conn.changed() => {}
                            }
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                                tokio::select! {
                                    _ = conn => {}
                                    _ = stop_conn.changed() => {}
                                }
                            }
                        }
                    }
                    open_connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    /// Stops accepting and drops every open connection, like a crashed process.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn upstream_handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    uploads: Arc<AtomicU64>,
    arrivals: Arc<AtomicU64>,
    name: String,
) -> Response<BoxBody> {
    arrivals.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // Read the body as a stream, counting bytes, never holding it.
    let mut body = body;
    let mut n = 0u64;
    let mut ok = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if !ok {
        return Response::builder()
            .status(400)
            .body(full("body aborted"))
            .unwrap();
    }
    if n > 0 {
        uploads.fetch_add(1, Ordering::SeqCst);
    }
    seen.lock().unwrap().push(Seen {
        version: parts.version,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: n,
    });
    let builder = Response::builder().header("x-upstream", name.as_str());
    if path == "/trailers" {
        // A body then trailers, like a gRPC response.
        let frames = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from_static(b"payload"))),
            Ok(hyper::body::Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t.insert("grpc-message", "ok".parse().unwrap());
                t
            })),
        ]);
        return builder
            .header("trailer", "grpc-status, grpc-message")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
            .unwrap();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return builder
            .status(code)
            .body(full(format!("status {code}")))
            .unwrap();
    }
    if let Some(kind) = path.strip_prefix("/body/") {
        return shaped_body(kind, &parts.headers, builder);
    }
    if path == "/upstream-cors" {
        // An upstream with CORS headers of its own, which a gateway CORS policy replaces.
        return builder
            .header("access-control-allow-origin", "*")
            .header("vary", "Accept-Language")
            .body(full("own cors"))
            .unwrap();
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return builder.body(full("slept")).unwrap();
    }
    if let Some(size) = path.strip_prefix("/download/") {
        let total: u64 = size.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(chunk.len() as u64);
                Some((
                    Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.slice(..n as usize))),
                    sent + n,
                ))
            }
        });
        return builder
            .header("content-length", total.to_string())
            .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
            .unwrap();
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": n,
    });
    builder
        .header("content-type", "application/json")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .body(full(echo.to_string()))
        .unwrap()
}

/// The 16 KiB-ish JSON document `/body/*` serves (deterministic, so a test can compare).
pub fn json_document() -> Bytes {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < 16 * 1024 - 64 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\"]}}",
            i * 7 % 100,
            i % 100
        ));
        i += 1;
    }
    s.push_str("]}");
    Bytes::from(s)
}

/// `/body/KIND`: responses of the kinds compression must tell apart.
fn shaped_body(kind: &str, req: &HeaderMap, builder: http::response::Builder) -> Response<BoxBody> {
    let doc = json_document();
    if kind == "png" {
        return builder
            .header("content-type", "image/png")
            .body(full(doc))
            .unwrap();
    }
    // Entity tags compared byte for byte, as many upstreams do; the 304 has no Content-Type.
    if kind == "json" && req.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
        return builder
            .status(304)
            .header("etag", "\"v1\"")
            .body(full(""))
            .unwrap();
    }
    let json = builder.header("content-type", "application/json");
    match kind {
        "json" => json
            .header("etag", "\"v1\"")
            .header("accept-ranges", "bytes")
            .header("content-length", doc.len().to_string())
            .body(full(doc))
            .unwrap(),
        "chunked-json" => {
            let parts: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = [
                doc.slice(..5000),
                doc.slice(5000..12000),
                doc.slice(12000..),
            ]
            .into_iter()
            .map(|b| Ok(hyper::body::Frame::data(b)))
            .collect();
            json.body(BodyExt::boxed(http_body_util::StreamBody::new(
                futures_util::stream::iter(parts),
            )))
            .unwrap()
        }
        "encoded" => json
            .header("content-encoding", "gzip")
            .body(full(doc))
            .unwrap(),
        "range" => json
            .status(206)
            .header("content-range", format!("bytes 0-999/{}", doc.len()))
            .body(full(doc.slice(..1000)))
            .unwrap(),
        "no-transform" => json
            .header("cache-control", "max-age=60, no-transform")
            .body(full(doc))
            .unwrap(),
        "tiny" => json.body(full("{\"ok\":true}")).unwrap(),
        _ => json.status(404).body(full("no such kind")).unwrap(),
    }
}

/// A TCP server that accepts and immediately closes every connection (a "reset" upstream).
pub async fn closing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    addr
}

/// A 127.0.0.1 port with nothing listening on it, reserved for the life of the test process.
pub fn closed_port() -> SocketAddr {
    let reserved = ClosedPort::reserve();
    let addr = reserved.addr;
    std::mem::forget(reserved.socket);
    addr
}

/// A port that refuses connections until released. Bound but never listening: connections get
/// a reset, and while it is held no other test running in parallel can be handed the port (a
/// listener bound and dropped frees it for the next `bind(0)`; another test's admin listener
/// once answered a "dead" upstream with a 404).
pub struct ClosedPort {
    pub addr: SocketAddr,
    socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn reserve() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ClosedPort { addr, socket }
    }

    /// Frees the port so a server can be started on it.
    pub fn release(self) -> SocketAddr {
        drop(self.socket);
        self.addr
    }
}
