//! Requests RFC 9110 / 9112 / 9113 require a server to refuse, sent as raw bytes: each gets the
//! status the RFC names (or a connection error where the framing is broken), and none of them
//! reaches the upstream — the test upstream counts every request head that arrives.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(up: &Upstream, extra_route: &str, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\n{extra}routes:\n{extra_route}  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n",
        up.addr
    )
}

/// What came back on one connection: everything read until the server closed it (or `wait`
/// passed), and whether it closed.
struct Wire {
    text: String,
    closed: bool,
}

async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Wire {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    Wire {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

fn arrivals(up: &Upstream) -> u64 {
    up.arrivals.load(Ordering::SeqCst)
}

/// Sends `request`, expects `status` with the JSON error body, nothing upstream, and (when
/// `close`) the connection closed after the answer.
async fn refused(gw: &TestGateway, up: &Upstream, request: &[u8], status: u16, close: bool) {
    let before = arrivals(up);
    let wire = exchange(gw.addr, request, Duration::from_millis(1500)).await;
    let what = String::from_utf8_lossy(request);
    assert_eq!(raw_status(&wire.text), status, "{what:?} → {}", wire.text);
    let body = wire.text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{what:?}: JSON error body ({e}): {body:?}"));
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json}"
    );
    assert!(json["request_id"].is_string(), "{json}");
    if close {
        assert!(wire.closed, "{what:?}: connection must be closed");
        assert!(
            wire.text.to_ascii_lowercase().contains("connection: close"),
            "{}",
            wire.text
        );
    } else {
        assert!(
            !wire.closed,
            "{what:?}: connection kept open (framing was fine)"
        );
    }
    // Give a forwarded request time to arrive before concluding none did.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(arrivals(up), before, "{what:?} reached the upstream");
}

#[tokio::test]
async fn host_rules() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
        400,
        false,
    )
    .await;
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: u@a\r\n\r\n",
        400,
        false,
    )
    .await;
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: a:b\r\n\r\n",
        400,
        false,
    )
    .await;
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
        false,
    )
    .await;
    refused(
        &gw,
        &up,
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        400,
        false,
    )
    .await;
    refused(&gw, &up, b"GET /a HTTP/1.1\r\n\r\n", 400, false).await;
    refused(&gw, &up, b"GET http://a/x HTTP/1.1\r\n\r\n", 400, false).await;

    // Accepted: HTTP/1.0 without Host, an IPv6 literal with a port, an empty Host.
    for ok in [
        &b"GET /ok10 HTTP/1.0\r\n\r\n"[..],
        b"GET /ok6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET /empty HTTP/1.1\r\nHost: \r\n\r\n",
    ] {
        let before = arrivals(&up);
        let wire = exchange(gw.addr, ok, Duration::from_millis(500)).await;
        assert_eq!(raw_status(&wire.text), 200, "{}", wire.text);
        assert_eq!(arrivals(&up), before + 1);
    }
    assert_eq!(
        up.last().headers["host"],
        "",
        "the empty Host is passed as it was"
    );

    // HTTP/2: `:authority` and a Host naming another host is malformed; the same host (case,
    // default port) is not.
    let c = h2_client();
    let before = arrivals(&up);
    let r = send(
        &c,
        http::Request::get(format!("http://{}/h2", gw.addr))
            .header("host", "other.example")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    r.assert_gateway_error(400);
    assert_eq!(arrivals(&up), before);
    let authority = gw.addr.to_string();
    let r = send(
        &c,
        http::Request::get(format!("http://{authority}/h2"))
            .header("host", authority.to_ascii_uppercase())
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn transfer_encoding_rules() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    let body = "3\r\nabc\r\n0\r\n\r\n";
    for (te, status) in [
        ("Transfer-Encoding: chunked, chunked\r\n", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
    ] {
        let req = format!("POST /te HTTP/1.1\r\nHost: a\r\n{te}\r\n{body}");
        refused(&gw, &up, req.as_bytes(), status, true).await;
    }
    // One chunked coding is fine, and the body arrives whole.
    let req = format!("POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    let wire = exchange(gw.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(raw_status(&wire.text), 200, "{}", wire.text);
    assert_eq!(up.last().body_len, 3);
    // Both Transfer-Encoding and Content-Length: framed by the former alone, the length
    // dropped, and the connection closed after the answer (RFC 9112 §6.3).
    let req = format!(
        "POST /te HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    let wire = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500)).await;
    assert_eq!(raw_status(&wire.text), 200, "{}", wire.text);
    assert!(wire.closed, "the connection must not be reused");
    let seen = up.last();
    assert_eq!(seen.body_len, 3);
    assert!(
        !seen.headers.contains_key("content-length"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn broken_chunked_framing_is_never_forwarded() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    // On a GET the gateway reads the body before forwarding: broken framing gets 400 and
    // the upstream sees nothing.
    for chunks in [
        "0_2e\r\n\r\n",
        "\r\n\r\n",
        "zz\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        let req =
            format!("GET /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}");
        let before = arrivals(&up);
        let wire = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500)).await;
        assert_eq!(raw_status(&wire.text), 400, "{chunks:?}: {}", wire.text);
        assert!(
            wire.closed,
            "{chunks:?}: nothing after broken framing can be trusted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(arrivals(&up), before, "{chunks:?} reached the upstream");
    }
    // A well-framed chunked body on a GET is forwarded with it, its length now known.
    let req =
        "GET /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let wire = exchange(gw.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(raw_status(&wire.text), 200, "{}", wire.text);
    let seen = up.last();
    assert_eq!(seen.body_len, 3, "the body is not dropped");
    assert_eq!(seen.headers["content-length"], "3");

    // A streamed body (POST, large limit) that breaks mid-way: the client gets 400, and the
    // upstream never receives a complete request (its chunked body is cut off, so the test
    // upstream — which reads bodies to the end before recording — records nothing).
    let seen_before = up.count();
    let req =
        "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n\r\n";
    let wire = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500)).await;
    assert_eq!(raw_status(&wire.text), 400, "{}", wire.text);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up.count(),
        seen_before,
        "the upstream saw a complete request"
    );
}

#[tokio::test]
async fn two_authorization_headers_are_refused_whatever_the_tokens() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    for (a, b) in [("Bearer x", "Bearer y"), ("Bearer same", "Bearer same")] {
        let req = format!(
            "GET /auth HTTP/1.1\r\nHost: a\r\nAuthorization: {a}\r\nAuthorization: {b}\r\n\r\n"
        );
        refused(&gw, &up, req.as_bytes(), 400, false).await;
    }
}

#[tokio::test]
async fn after_alpn_h2_anything_but_the_http2_preface_is_a_connection_error() {
    use rustls::pki_types::{CertificateDer, ServerName};
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
    let yaml = config(&up, "", "").replace(
        "address: \"127.0.0.1:0\" }]",
        &format!(
            "address: \"127.0.0.1:0\", tls: {{ certificates: [{{ cert_file: \"{}\", key_file: \"{}\" }}] }} }}]",
            dir.path().join("c.pem").display(),
            dir.path().join("k.pem").display()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    portcullis::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    assert!(ended.is_ok(), "the connection must be closed");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
        "an HTTP/1.1 answer on an h2 connection: {out:?}"
    );
    // Whatever came is HTTP/2 framing: at most the server's SETTINGS (type 4) and a GOAWAY
    // (type 7).
    let mut rest = &out[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(
            matches!(rest[3], 4 | 7),
            "frame type {} in {out:?}",
            rest[3]
        );
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert_eq!(arrivals(&up), 0);
}

#[tokio::test]
async fn tracestate_with_repeated_keys_and_level_2_keys_is_propagated() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    let c = client();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let long_key = format!("{}@{}", "t".repeat(241), "s".repeat(14));
    for (sent, want) in [
        ("foo=1,foo=1".to_string(), Some("foo=1".to_string())),
        ("foo=1,bar=2,foo=3".into(), Some("foo=1,bar=2".into())),
        ("foo@=1,foo@@bar=2".into(), Some("foo@=1,foo@@bar=2".into())),
        (format!("{long_key}=v"), Some(format!("{long_key}=v"))),
        ("@foo=1".into(), None),
    ] {
        let r = get(
            &c,
            &gw.url("/t"),
            &[("traceparent", parent), ("tracestate", &sent)],
        )
        .await;
        assert_eq!(r.status, 200);
        let got = up
            .last()
            .headers
            .get("tracestate")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got, want, "{sent}");
    }
}

#[tokio::test]
async fn a_per_try_timeout_bounds_the_single_try_too() {
    let up = Upstream::start("up").await;
    let route = "  - name: slow\n    match: { path: { prefix: /sleep } }\n    upstream: up\n    timeout_ms: 5000\n    retries: { attempts: 0, per_try_timeout_ms: 300 }\n  - name: post\n    match: { path: { prefix: /p } }\n    upstream: up\n    rewrite: { strip_prefix: /p }\n    timeout_ms: 5000\n    retries: { attempts: 2, per_try_timeout_ms: 300 }\n";
    let gw = TestGateway::start(&config(&up, route, "")).await;
    let c = client();
    let started = Instant::now();
    let r = get(&c, &gw.url("/sleep/1500"), &[]).await;
    r.assert_gateway_error(504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    // A method that is never retried still gets the per-try timeout for its one try.
    let started = Instant::now();
    let r = send(
        &c,
        http::Request::post(gw.url("/p/sleep/1500"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await;
    r.assert_gateway_error(504);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_reset_hint_is_when_a_retry_succeeds() {
    let up = Upstream::start("up").await;
    let limits = "rate_limits:\n  - { name: sw, algorithm: sliding_window, limit: 2, window_s: 2 }\n  - { name: tb, algorithm: token_bucket, capacity: 2, refill_per_second: 0.5 }\n";
    let route = "  - name: sw\n    match: { path: { prefix: /sw } }\n    upstream: up\n    rate_limits: [sw]\n  - name: tb\n    match: { path: { prefix: /tb } }\n    upstream: up\n    rate_limits: [tb]\n";
    let gw = TestGateway::start(&config(&up, route, limits)).await;
    let c = client();
    for path in ["/sw", "/tb"] {
        // Spend the quota, then be refused.
        let mut refused = None;
        for _ in 0..4 {
            let r = get(&c, &gw.url(path), &[]).await;
            if r.status == 429 {
                refused = Some(r);
                break;
            }
        }
        let r = refused.unwrap_or_else(|| panic!("{path}: never limited"));
        let header = |n: &str| r.headers[n].to_str().unwrap().to_string();
        let retry_after: u64 = header("retry-after").parse().unwrap();
        let t: u64 = header("ratelimit")
            .rsplit_once(";t=")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let reset: u64 = header("x-ratelimit-reset").parse().unwrap();
        assert_eq!(
            (t, reset),
            (retry_after, retry_after),
            "{path}: one number for one promise"
        );
        assert!(retry_after >= 1);
        // Waiting exactly that long is enough.
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let again = get(&c, &gw.url(path), &[]).await;
        assert_eq!(
            again.status, 200,
            "{path}: refused again after waiting {retry_after} s"
        );
    }
}
