//! Proxying through real sockets: header hygiene, request ids, the gateway's own refusals (each
//! with its JSON body, and none of them reaching the upstream), and listener limits.
//! Its tests run one at a time (each takes `ALONE` first): several hold the README's timeout
//! promises (1.25x) on the wire.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn base(upstreams: &str, routes: &str, limits: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n{limits}admin:\n  address: 127.0.0.1:0\ndefaults:\n  auth: none\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

fn upstream_yaml(name: &str, addr: std::net::SocketAddr) -> String {
    format!(
        "  - name: {name}\n    targets: [{{ address: \"{addr}\" }}]\n    connect_timeout_ms: 500\n"
    )
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n    headers:\n      request:\n        set: { x-added: yes }\n        add: { x-kept: appended }\n        remove: [x-internal-debug]\n      response:\n        remove: [x-upstream]\n        add: { x-served-by: gateway }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;

    let req = "GET /echo?a=1 HTTP/1.1\r\nHost: api.test:8080\r\nConnection: keep-alive, x-conn-named\r\nx-conn-named: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: websocket\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\nx-request-id: client-id-123\r\nx-internal-debug: 1\r\nx-kept: kept\r\nContent-Length: 0\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    for h in [
        "x-conn-named",
        "keep-alive",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "connection",
        "x-internal-debug",
    ] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    // `TE: trailers` (the client can take trailers, e.g. gRPC) and `Trailer` are end to end.
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["trailer"], "x-t");
    // `add` appends beside the client's value.
    let kept: Vec<_> = seen.headers.get_all("x-kept").iter().collect();
    assert_eq!(kept, ["kept", "appended"]);
    assert_eq!(seen.headers["x-added"], "yes");
    // The peer is no trusted proxy: the client's X-Forwarded-For is replaced, not extended.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "api.test:8080");
    assert_eq!(seen.headers["host"], "api.test:8080");
    assert_eq!(seen.headers["x-request-id"], "client-id-123");
    assert_eq!(seen.uri, "/echo?a=1");
    // Response: the id comes back, the upstream's hop-by-hop headers and removed headers do not.
    let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-request-id: client-id-123"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("x-upstream:"), "{head}");
    assert!(head.contains("x-served-by: gateway"), "{head}");
}

#[tokio::test]
async fn redirects_keep_what_they_do_not_replace_and_never_reach_the_upstream() {
    let up = Upstream::start("up").await;
    let routes = "  - name: to-https\n    match: { path: { prefix: /secure } }\n    redirect: { scheme: https, status: 301 }\n  - name: moved\n    match: { path: { prefix: /v1 } }\n    redirect: { replace_prefix: /v2, status: 308 }\n  - name: elsewhere\n    match: { path: { exact: /old } }\n    redirect: { host: new.example, port: 9443, path: /new }\n  - name: fixed\n    match: { path: { prefix: /fixed } }\n    upstream: up\n    rewrite: { replace_full_path: /health }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let cases = [
        ("/secure/x?a=1", 301, "https://api.test/secure/x?a=1"),
        (
            "/v1/orders/7?expand=items",
            308,
            "http://api.test:8080/v2/orders/7?expand=items",
        ),
        ("/v1", 308, "http://api.test:8080/v2"),
        ("/old?q", 302, "http://new.example:9443/new?q"),
    ];
    for (path, status, location) in cases {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: api.test:8080\r\nConnection: close\r\n\r\n");
        let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&resp), status, "{path}: {resp}");
        let got = resp
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_else(|| panic!("{path}: no location: {resp}"));
        assert_eq!(got.trim(), location, "{path}");
    }
    assert_eq!(up.count(), 0, "a redirect reached the upstream");
    // replace_full_path: every path becomes the one configured; the query is kept.
    let r = get(&client(), &gw.url("/fixed/anything/here?q=1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/health?q=1");
}

#[tokio::test]
async fn allowed_and_denied_headers_filter_what_the_client_sent_and_the_gateways_own_follow() {
    let up = Upstream::start("up").await;
    let routes = "  - name: allow\n    match: { path: { prefix: /allow } }\n    upstream: up\n    request: { allowed_headers: [x-keep, content-type, X-Both], denied_headers: [x-both] }\n    headers: { request: { set: { x-added: by-route } } }\n  - name: deny\n    match: { path: { prefix: /deny } }\n    upstream: up\n    request: { denied_headers: [cookie, x-secret] }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let sent = "x-keep: 1\r\nx-other: 2\r\nx-both: 3\r\ncookie: s=1\r\nx-secret: k\r\nx-request-id: client-id-1\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let req = format!("POST /allow HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{sent}");
    let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    for h in ["x-other", "x-both", "cookie", "x-secret"] {
        assert!(!seen.headers.contains_key(h), "{h} passed the allow-list");
    }
    assert_eq!(seen.headers["x-keep"], "1");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["host"], "api.test");
    assert_eq!(seen.body_len, 2, "framing is kept");
    // The gateway's own headers and the route's rules come after the filter.
    assert_eq!(seen.headers["x-added"], "by-route");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.contains_key("x-request-id"));
    let req = format!("POST /deny HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{sent}");
    let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    assert!(!seen.headers.contains_key("cookie") && !seen.headers.contains_key("x-secret"));
    assert_eq!(seen.headers["x-other"], "2");
    assert_eq!(seen.headers["x-both"], "3");
}

#[tokio::test]
async fn templated_header_values_are_rendered_per_request() {
    let up = Upstream::start("up").await;
    let routes = r#"  - name: tpl
    match: { path: { prefix: /tpl } }
    upstream: up
    headers:
      request:
        set:
          x-trace: "${request_id}"
          x-who: "${client_ip}/${route}/${upstream}"
          x-host: "${host} ${host_label.0}"
          x-region: "${query.region}"
          x-copy: "${header.x-client}"
          x-missing: "${header.x-absent}"
          x-lit: "$${not_a_var}"
        add:
          x-uuid: "${uuid}"
      response:
        set: { x-served: "${route} ${request_id}" }
"#;
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let c = client();
    let r = get(
        &c,
        &gw.url("/tpl/x?region=eu%2Dwest"),
        &[
            ("host", "acme.api.example:8080"),
            ("x-client", "c-7"),
            ("x-request-id", "rid-42"),
            ("x-missing", "client-sent"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    let h = |n: &str| seen.headers[n].to_str().unwrap().to_string();
    assert_eq!(h("x-trace"), "rid-42");
    assert_eq!(h("x-who"), "127.0.0.1/tpl/up");
    assert_eq!(h("x-host"), "acme.api.example acme");
    assert_eq!(h("x-region"), "eu-west");
    assert_eq!(h("x-copy"), "c-7");
    assert_eq!(h("x-lit"), "${not_a_var}");
    // A lone variable without a value is not sent: `set` then removes the client's copy.
    assert!(!seen.headers.contains_key("x-missing"));
    let uuid = h("x-uuid");
    assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"));
    assert_eq!(r.headers["x-served"], "tpl rid-42");
    // A second request: new values, a new uuid.
    let r2 = get(&c, &gw.url("/tpl/y"), &[("x-request-id", "rid-43")]).await;
    assert_eq!(r2.headers["x-served"], "tpl rid-43");
    assert_ne!(up.last().headers["x-uuid"].to_str().unwrap(), uuid);
    assert!(!up.last().headers.contains_key("x-region"));
}

#[tokio::test]
async fn insane_request_ids_are_replaced() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let c = client();
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has space", ""] {
        let r = get(&c, &gw.url("/x"), &[("x-request-id", bad)]).await;
        assert_eq!(r.status, 200);
        let sent = up.last().headers["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_ne!(sent, bad);
        assert_eq!(sent.len(), 32);
        assert_eq!(r.headers["x-request-id"].to_str().unwrap(), sent);
    }
    let r = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(r.headers["x-request-id"], up.last().headers["x-request-id"]);
}

#[tokio::test]
async fn h2c_prior_knowledge_downstream_to_h1_upstream() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let r = get(&h2_client(), &gw.url("/over-h2"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/over-h2");
    assert!(up.last().headers.contains_key("host"));
}

fn refusals_config(
    up: &Upstream,
    dead: std::net::SocketAddr,
    reset: std::net::SocketAddr,
) -> String {
    let upstreams = format!(
        "{}{}{}",
        upstream_yaml("up", up.addr),
        upstream_yaml("dead", dead),
        upstream_yaml("reset", reset)
    );
    let routes = r#"  - name: shaped
    match: { path: { prefix: /shaped } }
    upstream: up
    request:
      max_body_bytes: 1000
      content_types: [application/json, "text/*"]
      required_headers: [x-tenant]
  - name: big
    match: { path: { prefix: /big } }
    upstream: up
    request:
      max_body_bytes: 2000000
  - name: slow
    match: { path: { prefix: /sleep } }
    upstream: up
    timeout_ms: 300
  - name: dead
    match: { path: { prefix: /dead } }
    upstream: dead
  - name: reset
    match: { path: { prefix: /reset } }
    upstream: reset
"#;
    let limits = "    limits: { max_header_bytes: 2048 }\n";
    base(&upstreams, routes, limits)
}

fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn refusals_have_the_right_status_and_json_body_and_never_reach_the_upstream() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&refusals_config(
        &up,
        closed_port(),
        closing_upstream().await,
    ))
    .await;
    let c = client();
    let json = ("content-type", "application/json");
    let tenant = ("x-tenant", "acme");

    // Accepted: the control case reaches the upstream.
    let ok = send(
        &c,
        post(&gw.url("/shaped"), &[json, tenant], b"{}".to_vec()),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.count(), 1);

    // 413 by Content-Length.
    send(
        &c,
        post(&gw.url("/shaped"), &[json, tenant], vec![b'a'; 1001]),
    )
    .await
    .assert_gateway_error(413);
    // 415: wrong or missing content type.
    send(
        &c,
        post(
            &gw.url("/shaped"),
            &[("content-type", "application/xml"), tenant],
            b"<a/>".to_vec(),
        ),
    )
    .await
    .assert_gateway_error(415);
    send(&c, post(&gw.url("/shaped"), &[tenant], b"{}".to_vec()))
        .await
        .assert_gateway_error(415);
    // text/* matches any text type.
    assert_eq!(
        send(
            &c,
            post(
                &gw.url("/shaped"),
                &[("content-type", "text/plain; charset=utf-8"), tenant],
                b"hi".to_vec()
            )
        )
        .await
        .status,
        200
    );
    assert_eq!(up.count(), 2);
    // 400: missing required header.
    send(&c, post(&gw.url("/shaped"), &[json], b"{}".to_vec()))
        .await
        .assert_gateway_error(400);
    // 404: no route.
    get(&c, &gw.url("/nowhere"), &[])
        .await
        .assert_gateway_error(404);
    // 431: request head over max_header_bytes.
    let big = "v".repeat(3000);
    get(&c, &gw.url("/shaped"), &[("x-big", &big)])
        .await
        .assert_gateway_error(431);
    assert_eq!(up.count(), 2, "a refused request reached the upstream");

    // 413 for a chunked body that grows past the limit mid-stream (small limit: read first,
    // so the upstream sees nothing at all).
    let chunked = format!(
        "POST /shaped HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-tenant: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}",
        "1f4\r\n".to_string() + &"a".repeat(500) + "\r\n" + "1f4\r\n" + &"a".repeat(500) + "\r\n" + "1f4\r\n" + &"a".repeat(500) + "\r\n0\r\n\r\n"
    );
    let resp = raw(gw.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
    assert!(raw_json(&resp)["request_id"].is_string());
    assert_eq!(up.count(), 2);
    assert_eq!(up.arrivals.load(std::sync::atomic::Ordering::SeqCst), 2);

    // 413 for a chunked body past a large limit (streamed): the upstream never receives a
    // complete request.
    let uploads_before = up
        .completed_uploads
        .load(std::sync::atomic::Ordering::SeqCst);
    let mut chunked = String::from("POST /big/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let chunk = "a".repeat(65536);
    for _ in 0..40 {
        chunked.push_str(&format!("10000\r\n{chunk}\r\n"));
    }
    chunked.push_str("0\r\n\r\n");
    let resp = raw(gw.addr, chunked.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(raw_status(&resp), 413, "{}", &resp[..resp.len().min(300)]);
    assert!(raw_json(&resp)["error"].is_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up.completed_uploads
            .load(std::sync::atomic::Ordering::SeqCst),
        uploads_before
    );

    // 502: connection refused, and a connection closed without a response.
    get(&c, &gw.url("/dead"), &[])
        .await
        .assert_gateway_error(502);
    get(&c, &gw.url("/reset"), &[])
        .await
        .assert_gateway_error(502);
    // 504: the route's timeout.
    let started = std::time::Instant::now();
    get(&c, &gw.url("/sleep/3000"), &[])
        .await
        .assert_gateway_error(504);
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn concurrent_request_limit_sheds_load_with_503_and_retry_after() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let limits = "    limits: { max_concurrent_requests: 1 }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, limits)).await;
    let c = client();
    let url = gw.url("/sleep/800");
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, &url, &[]).await })
    };
    wait_until(
        "the slow request is at the upstream",
        Duration::from_secs(5),
        || up.count() == 1,
    )
    .await;
    let before = up.count();
    let shed = get(&c, &gw.url("/fast"), &[]).await;
    shed.assert_gateway_error(503);
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(up.count(), before, "a shed request reached the upstream");
    assert_eq!(slow.await.unwrap().status, 200);
    // The slot is free again.
    assert_eq!(get(&c, &gw.url("/fast"), &[]).await.status, 200);
}

#[tokio::test]
async fn max_connections_closes_extra_connections() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let limits = "    limits: { max_connections: 2 }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, limits)).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Two connections the gateway has certainly accepted: each has been answered.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        open.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "third connection was served");
    // Once those close, a new connection is served again (as soon as the gateway has seen
    // them close: tried until then, within a deadline).
    drop(open);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = raw(
            gw.addr,
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if raw_status(&r) == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection served after the others closed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn slow_loris_and_idle_connections_are_closed() {
    let _alone = ALONE.lock().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gateway = |limits: &str| base(&upstream_yaml("up", up.addr), routes, limits);
    // A keep-alive connection that has answered a request; returns it and the time it was
    // answered.
    async fn answered(gw: &TestGateway) -> (tokio::net::TcpStream, std::time::Instant) {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        (s, std::time::Instant::now())
    }
    async fn closed_after(mut s: tokio::net::TcpStream, from: std::time::Instant) -> Duration {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "the connection was not closed within 5 s");
        from.elapsed()
    }

    // Slow loris: a head that never completes is cut off after the header read timeout.
    let gw = TestGateway::start(&gateway(
        "    limits: { header_read_timeout_ms: 300, idle_timeout_ms: 5000 }\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    assert_closed_on_time(closed_after(s, started).await, Duration::from_millis(300));
    assert_eq!(up.count(), 0);
    // Between requests the wait for the next head is also bounded by the header read timeout
    // (hyper starts that timer when it starts waiting for a head): the shorter one wins.
    let (s, answered_at) = answered(&gw).await;
    assert_closed_on_time(
        closed_after(s, answered_at).await,
        Duration::from_millis(300),
    );

    // Idle keep-alive connection: closed after idle_timeout_ms without traffic.
    let gw = TestGateway::start(&gateway(
        "    limits: { header_read_timeout_ms: 3000, idle_timeout_ms: 500 }\n",
    ))
    .await;
    let (s, answered_at) = answered(&gw).await;
    assert_closed_on_time(
        closed_after(s, answered_at).await,
        Duration::from_millis(500),
    );

    // A request that is slower than the idle timeout is not cut off while in flight.
    let r = get(&client(), &gw.url("/sleep/900"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn direct_response_and_rewrites() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = r#"  - name: health
    match: { path: { exact: /healthz } }
    direct_response: { status: 203, body: "fine", headers: { content-type: text/plain, x-a: b } }
  - name: strip
    match: { path: { prefix: /v1 } }
    upstream: up
    rewrite: { strip_prefix: /v1 }
  - name: replace
    match: { path: { prefix: /old } }
    upstream: up
    rewrite: { replace_prefix: { from: /old, to: /internal/new } }
"#;
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let c = client();
    let r = get(&c, &gw.url("/healthz"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (203, "fine"));
    assert_eq!(r.headers["x-a"], "b");
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(up.count(), 0);
    get(&c, &gw.url("/v1/orders/7?x=1"), &[]).await;
    assert_eq!(up.last().uri, "/orders/7?x=1");
    get(&c, &gw.url("/v1"), &[]).await;
    assert_eq!(up.last().uri, "/");
    get(&c, &gw.url("/old/a"), &[]).await;
    assert_eq!(up.last().uri, "/internal/new/a");
}

#[tokio::test]
async fn weighted_round_robin_across_targets() {
    let _alone = ALONE.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let upstreams = format!(
        "  - name: up\n    targets:\n      - {{ address: \"{}\", weight: 3 }}\n      - {{ address: \"{}\", weight: 1 }}\n",
        a.addr, b.addr
    );
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstreams, routes, "")).await;
    let c = client();
    for _ in 0..400 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (300, 100));
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_survive_a_reload() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let config = |marker: &str| {
        base(
            &upstream_yaml("up", up.addr),
            &format!("  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    headers: {{ response: {{ set: {{ x-marker: \"{marker}\" }} }} }}\n"),
            "",
        )
    };
    let gw = TestGateway::start(&config("a")).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
    }
    // Bodies of several sizes, and a HEAD, all leave the connection reusable.
    assert_eq!(
        get(&c, &gw.url("/download/300000"), &[]).await.body.len(),
        300_000
    );
    let head = send(
        &c,
        Request::head(gw.url("/x"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sequential requests opened extra upstream connections"
    );

    gw.write_config(&config("b"));
    gw.gateway.reload().await.unwrap();
    let r = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(r.headers["x-marker"], "b");
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the reload dropped the pool"
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced_without_an_error() {
    let _alone = ALONE.lock().await;
    // An upstream that closes every connection after one response (like a short keep-alive).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(s);
            });
        }
    });
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", addr), routes, "")).await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream whose keep-alive ends just as the gateway reuses the connection: it answers the
/// first request of every connection and closes the connection on reading the second, with
/// no answer (the race between an upstream's idle timer and a reused connection). Counts
/// requests read and connections accepted.
async fn closes_on_reuse() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (rq, cn) = (Arc::clone(&requests), Arc::clone(&connections));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            cn.fetch_add(1, Ordering::SeqCst);
            let rq = Arc::clone(&rq);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                // Requests here are small: one read is one request head (and its body).
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                rq.fetch_add(1, Ordering::SeqCst);
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if s.write_all(ok).await.is_err() {
                    return;
                }
                if s.read(&mut buf).await.unwrap_or(0) > 0 {
                    rq.fetch_add(1, Ordering::SeqCst);
                }
                drop(s);
            });
        }
    });
    (addr, requests, connections)
}

#[tokio::test]
async fn a_request_on_a_connection_the_upstream_closes_at_that_moment_is_sent_again_if_idempotent()
{
    let _alone = ALONE.lock().await;
    let (addr, requests, connections) = closes_on_reuse().await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", addr), routes, "")).await;
    let c = client();
    // No retries are configured: this is the pool's own recovery, for requests that cannot
    // have changed anything (idempotent methods, no body) and got no byte of an answer, on a
    // connection quiet for a second or more (when keep-alive timers fire).
    let r = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    for method in ["GET", "DELETE"] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = send(
            &c,
            Request::builder()
                .method(method)
                .uri(gw.url("/x"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok"),
            "{method}"
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        5,
        "the first request once; the GET and the DELETE each on the closing connection, then on a new one"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);

    // A POST may have been acted on: it is never sent twice, and the client is told.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = requests.load(Ordering::SeqCst);
    let post = send(
        &c,
        Request::post(gw.url("/order"))
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
            .unwrap(),
    )
    .await;
    post.assert_gateway_error(502);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        before + 1,
        "the POST was sent once"
    );

    // The documented limit: on a connection reused at once (not a keep-alive timer's case)
    // the failure stands and only a route retry policy (`on: [reset]`) would send it again.
    let r = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "a new connection after the POST's");
    get(&c, &gw.url("/x"), &[]).await.assert_gateway_error(502);
}

#[tokio::test]
async fn http10_request_without_host_gets_the_target_as_host() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes, "")).await;
    let resp = raw(
        gw.addr,
        b"GET /old HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["host"], up.addr.to_string().as_str());
    assert!(!up.last().headers.contains_key("x-forwarded-host"));
}
