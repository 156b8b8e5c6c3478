//! The cache tests' origin: a real HTTP/1.1 server whose answer the request's query decides,
//! so each test states the upstream's caching headers where it uses them.
//!
//! | query | effect |
//! |---|---|
//! | `cc=V` | `Cache-Control: V` |
//! | `etag=V` | `ETag: "V"`; a request with `If-None-Match: "V"` gets 304 |
//! | `lm=S` | `Last-Modified` S seconds before a fixed instant (2023-11-14); `If-Modified-Since` at or after it gets 304 |
//! | `expires=S` | `Expires` S seconds from now (`expires=0` sends the invalid `0`) |
//! | `vary=NAMES` | `Vary: NAMES` |
//! | `status=N` | status N |
//! | `delay_ms=N` | waits before the head |
//! | `cookie=1` | `Set-Cookie: session=abc` |
//! | `skey=K1+K2` | `Surrogate-Key: K1 K2` |
//! | `size=N` | body of N bytes of `x`, in 16 KiB chunks, `chunk_ms` apart |
//! | `age=N` | `Age: N` |
//!
//! Otherwise the body is JSON: `{"n": <this request's number>, "user": <x-user>, "lang":
//! <accept-language>, "encoding": <accept-encoding>}` — `n` tells a fresh answer from a stored
//! one. `failing` makes every answer 503.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Every request's method, target and headers, in arrival order.
    pub seen: Arc<Mutex<Vec<(String, String, HeaderMap)>>>,
    pub failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (r, s, f) = (requests.clone(), seen.clone(), failing.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, s, f) = (r.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (r, s, f) = (r.clone(), s.clone(), f.clone());
                        async move { Ok::<_, Infallible>(answer(req, &r, &s, &f).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            requests,
            seen,
            failing,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The headers of the last request that arrived.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .map(|s| s.2.clone())
            .unwrap_or_default()
    }

    /// Stops accepting (connections already open stay until they close).
    pub fn stop(&self) {
        self.task.abort();
    }
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

async fn answer(
    req: Request<Incoming>,
    requests: &AtomicU64,
    seen: &Mutex<Vec<(String, String, HeaderMap)>>,
    failing: &AtomicBool,
) -> Response<OriginBody> {
    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
    seen.lock().unwrap().push((
        req.method().to_string(),
        req.uri().to_string(),
        req.headers().clone(),
    ));
    let query = req.uri().query().unwrap_or("").to_string();
    let q = |name| param(&query, name).map(|v| v.replace("%20", " ").replace("%22", "\""));
    if let Some(ms) = q("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut builder = Response::builder();
    if failing.load(Ordering::SeqCst) {
        return builder.status(503).body(full("origin failing")).unwrap();
    }
    let headers = req.headers();
    let mut not_modified = false;
    if let Some(cc) = q("cc") {
        builder = builder.header("cache-control", cc);
    }
    if let Some(tag) = q("etag") {
        let tag = format!("\"{tag}\"");
        not_modified |= headers
            .get("if-none-match")
            .is_some_and(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim() == tag));
        builder = builder.header("etag", tag);
    }
    if let Some(ago) = q("lm").and_then(|v| v.parse::<u64>().ok()) {
        let lm = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 - ago);
        let lm_text = httpdate::fmt_http_date(lm);
        if !headers.contains_key("if-none-match") {
            not_modified |= headers
                .get("if-modified-since")
                .and_then(|v| httpdate::parse_http_date(v.to_str().unwrap_or("")).ok())
                .is_some_and(|since| since >= lm);
        }
        builder = builder.header("last-modified", lm_text);
    }
    if let Some(s) = q("expires") {
        let v = if s == "0" {
            "0".to_string()
        } else {
            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(s.parse().unwrap()))
        };
        builder = builder.header("expires", v);
    }
    if let Some(v) = q("vary") {
        builder = builder.header("vary", v);
    }
    if q("cookie").is_some() {
        builder = builder.header("set-cookie", "session=abc");
    }
    if let Some(k) = q("skey") {
        builder = builder.header("surrogate-key", k.replace('+', " "));
    }
    if let Some(a) = q("age") {
        builder = builder.header("age", a);
    }
    builder = builder.header("date", httpdate::fmt_http_date(SystemTime::now()));
    if not_modified {
        return builder.status(304).body(full("")).unwrap();
    }
    let status: u16 = q("status").and_then(|s| s.parse().ok()).unwrap_or(200);
    builder = builder.status(status);
    if let Some(size) = q("size").and_then(|s| s.parse::<usize>().ok()) {
        let gap = Duration::from_millis(q("chunk_ms").and_then(|s| s.parse().ok()).unwrap_or(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let mut left = size;
            while left > 0 {
                let n = left.min(16 * 1024);
                left -= n;
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'x'; n]))))
                    .await
                    .is_err()
                {
                    return;
                }
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
        });
        let stream = tokio_stream_from(rx);
        return builder
            .header("content-length", size)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = serde_json::json!({
        "n": n,
        "user": text("x-user"),
        "lang": text("accept-language"),
        "encoding": text("accept-encoding"),
    });
    builder
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

fn full(s: impl Into<Bytes>) -> OriginBody {
    BodyExt::boxed(http_body_util::Full::new(s.into()))
}

/// An mpsc receiver as a stream of frames (no extra crate).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
