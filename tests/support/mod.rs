//! Shared helpers for the end-to-end tests: real in-process upstreams, a gateway started from a
//! YAML string on random ports, and small HTTP clients (hyper for ordinary requests, raw TCP for
//! exact bytes on the wire).
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::gateway::Gateway;
use portcullis::server::Running;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A real HTTP/1.1 + h2c upstream on 127.0.0.1 with a few behaviours chosen by path:
/// `/status/N`, `/sleep/MS`, `/download/BYTES`, `/upload` (counts the body), anything else
/// echoes. Every response carries `x-upstream: NAME`.
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

/// A 127.0.0.1 port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A gateway started in-process from YAML, on random ports.
pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl TestGateway {
    pub async fn start(yaml: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let gateway = match Gateway::load(config_path.clone()) {
            Ok(g) => g,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let running = portcullis::server::start(gateway.clone()).await.unwrap();
        let addr = running.listeners[0].1;
        let admin = running.admin;
        TestGateway {
            gateway,
            running: Some(running),
            addr,
            admin,
            dir,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Writes a new config file (for a later reload).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }
}

/// A simple response for assertions.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the gateway's JSON error shape and that its request id matches the header.
    pub fn assert_gateway_error(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let j = self.json();
        assert!(
            j["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error message: {j}"
        );
        let rid = self
            .headers
            .get("x-request-id")
            .expect("x-request-id header");
        assert_eq!(j["request_id"].as_str(), Some(rid.to_str().unwrap()), "{j}");
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends raw bytes on a fresh connection and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if complete_response(&out) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// True once `buf` holds a full response with a Content-Length body.
fn complete_response(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..head_end].lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match len {
        Some(n) => buf.len() >= head_end + 4 + n,
        None => false,
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw response.
pub fn raw_json(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

/// A free 127.0.0.1 port (bound and released; good enough for tests on loopback).
pub fn free_addr() -> SocketAddr {
    closed_port()
}

/// The `portcullis` binary running as a child process.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl GatewayProcess {
    /// `yaml` may use `{LISTEN}` and `{ADMIN}`, replaced with free addresses.
    pub async fn spawn(yaml: &str, threads: usize) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let (addr, admin) = (free_addr(), free_addr());
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(
            &config_path,
            yaml.replace("{LISTEN}", &addr.to_string())
                .replace("{ADMIN}", &admin.to_string()),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .args(["--worker-threads", &threads.to_string()]);
        Self::launch(cmd, addr, admin, dir, config_path).await
    }

    /// A gateway following the config store at `store` as `instance` with `labels`. Its
    /// listener and admin addresses reach the stored documents as `${GW_LISTEN}` and
    /// `${GW_ADMIN}`; `addrs` reuses those of an earlier process (a restart).
    pub async fn follow(
        store: &str,
        instance: &str,
        labels: &str,
        dir: tempfile::TempDir,
        addrs: Option<(SocketAddr, SocketAddr)>,
    ) -> GatewayProcess {
        let (addr, admin) = addrs.unwrap_or_else(|| (free_addr(), free_addr()));
        let lkg = dir.path().join("last-known-good.json");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["run", "--store", store, "--instance-id", instance])
            .args(["--instance-labels", labels, "--worker-threads", "1"])
            .arg("--last-known-good")
            .arg(&lkg)
            .env("GW_LISTEN", addr.to_string())
            .env("GW_ADMIN", admin.to_string());
        Self::launch(cmd, addr, admin, dir, lkg).await
    }

    async fn launch(
        mut cmd: std::process::Command,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: tempfile::TempDir,
        config_path: std::path::PathBuf,
    ) -> GatewayProcess {
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start portcullis");
        let p = GatewayProcess {
            child,
            addr,
            admin,
            dir,
            config_path,
        };
        let c = client();
        for _ in 0..100 {
            let ready = tokio::time::timeout(
                Duration::from_millis(500),
                c.request(
                    Request::get(format!("http://{admin}/health/ready"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                ),
            )
            .await;
            if let Ok(Ok(r)) = ready {
                if r.status() == 200 {
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway process did not become ready");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child this test started.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Resident memory (kB) and its peak, from /proc.
    pub fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(
            &self.config_path,
            yaml.replace("{LISTEN}", &self.addr.to_string())
                .replace("{ADMIN}", &self.admin.to_string()),
        )
        .unwrap();
    }

    /// `/admin/config-version` as JSON.
    pub async fn config_document(&self) -> serde_json::Value {
        get(
            &client(),
            &format!("http://{}/admin/config-version", self.admin),
            &[],
        )
        .await
        .json()
    }

    pub async fn config_version(&self) -> u64 {
        let r = get(
            &client(),
            &format!("http://{}/admin/config-version", self.admin),
            &[],
        )
        .await;
        r.json()["config_version"].as_u64().unwrap()
    }

    /// Stops the process (SIGTERM) and hands back its directory, for a restart that keeps it.
    pub fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "gateway did not stop"
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real Redis server (Debian's `redis-server`) on 127.0.0.1 and a random port, without
/// persistence. Panics if the binary is missing: `scripts/test` installs it.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_addr().port();
        let mut r = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); scripts/test installs it (apt package redis-server)")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if self.command(&["PING"]).await.as_deref() == Some("+PONG") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Kills the server (SIGKILL, by the PID this test started).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one command (inline protocol) and returns the first reply line.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_string)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small HTTP/1.1 server on `addr` (port 0: any) answering every request with `handler`: the
/// stand-in for the services the gateway itself calls (IdP, introspection, OTLP collector).
pub async fn serve_on<F, Fut>(addr: SocketAddr, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response with `status` and `body`.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// A PostgreSQL server from Debian's package on 127.0.0.1 and a free port, in a temporary
/// data directory. Panics (never skips) when PostgreSQL is not installed: scripts/test
/// installs it.
pub struct PostgresServer {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PostgresServer {
    fn bin(name: &str) -> std::path::PathBuf {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().join("bin").join(name))
                    .collect()
            })
            .unwrap_or_default();
        found.retain(|p: &std::path::PathBuf| p.exists());
        found.sort();
        found.pop().unwrap_or_else(|| {
            panic!("PostgreSQL's {name} not found under /usr/lib/postgresql: install the postgresql package (scripts/test does)")
        })
    }

    /// PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
    fn as_server_user(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_ids();
            cmd.uid(uid).gid(gid);
        }
    }

    pub fn start() -> PostgresServer {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = std::process::Command::new(Self::bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "portcullis",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Self::as_server_user(&mut initdb);
        assert!(
            initdb.status().expect("run initdb").success(),
            "initdb failed"
        );
        let port = free_addr().port();
        let mut server = PostgresServer {
            child: None,
            dir,
            port,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = std::process::Command::new(Self::bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Self::as_server_user(&mut cmd);
        self.child = Some(cmd.spawn().expect("start postgres"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Accepting TCP is not enough: wait until a query succeeds.
        loop {
            if std::process::Command::new(Self::bin("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "portcullis",
                ])
                .args(["-d", "postgres", "-tAc", "SELECT 1"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("the postgres user exists (created by the postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}
