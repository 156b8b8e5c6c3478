//! Clients for the tests: hyper (HTTP/1.1 and h2c) for ordinary requests, raw TCP for exact
//! bytes on the wire, and `Reply` with the assertions every test shares.

use super::*;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// `POST url` with an empty body.
pub async fn post_empty(client: &HttpClient, url: &str) -> Reply {
    send(
        client,
        Request::post(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
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
/// The lower-case field names a response's `Vary` lines list, in order.
pub fn vary_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

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

/// Waits until `cond` holds (checked every 10 ms) for at most `limit`, then panics naming
/// `what`: synchronisation by condition, never by a guessed sleep.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raises this process's open-file limit to at least `need` (up to the hard limit), for tests
/// that hold many sockets at once; panics with the numbers when the hard limit is lower.
pub fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur >= need {
            return;
        }
        assert!(
            lim.rlim_max >= need,
            "this test holds {need} sockets at once; the hard open-file limit is {} (raise it, e.g. `ulimit -Hn {need}`)",
            lim.rlim_max
        );
        lim.rlim_cur = need;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// A free 127.0.0.1 port for a child process (Redis, PostgreSQL, a gateway process), which
/// must bind it itself. Never the same port twice in one test binary; another process can
/// still take it in the moment between, so the harnesses that use it start their server again
/// on a new port when it reports the port taken.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// How many times a harness starts a child server on a new port when its port was taken.
pub const PORT_ATTEMPTS: usize = 5;

/// Asserts a connection closed as the README promises for a timeout of `timeout`: not before
/// it (5% for where the test's clock started), and within 1.25× (timers are checked in quarter
/// steps) plus 200 ms for scheduling on a loaded 2-core machine.
pub fn assert_closed_on_time(waited: std::time::Duration, timeout: std::time::Duration) {
    let earliest = timeout.mul_f64(0.95);
    let latest = timeout.mul_f64(1.25) + std::time::Duration::from_millis(200);
    assert!(
        waited >= earliest && waited <= latest,
        "closed after {waited:?}; the promise for {timeout:?} is {earliest:?}..={latest:?}"
    );
}
