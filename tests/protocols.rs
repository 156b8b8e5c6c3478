//! Protocol translation through the gateway: HTTP/1.1 and HTTP/2 clients against HTTP/1.1 and
//! h2c upstreams in every combination, bodies and trailers carried through.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;

fn config(up: &Upstream, protocol: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: up, protocol: {protocol}, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n",
        up.addr
    )
}

/// Sends a POST with a body to `/trailers` and returns (version seen upstream, body, trailers).
async fn exchange(
    c: &HttpClient,
    gw: &TestGateway,
    up: &Upstream,
) -> (http::Version, Bytes, http::HeaderMap) {
    let req = http::Request::post(gw.url("/trailers"))
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"request body")))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let seen = up.last();
    assert_eq!(seen.body_len, 12, "request body arrived whole");
    (seen.version, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn h1_and_h2_clients_to_h1_and_h2c_upstreams_with_trailers() {
    for (protocol, want_upstream) in [
        ("http1", http::Version::HTTP_11),
        ("http2", http::Version::HTTP_2),
    ] {
        let up = Upstream::start("up").await;
        let gw = TestGateway::start(&config(&up, protocol)).await;
        for (client, name) in [(client(), "h1"), (h2_client(), "h2")] {
            let (version, body, trailers) = exchange(&client, &gw, &up).await;
            assert_eq!(
                version, want_upstream,
                "{name} client → {protocol} upstream"
            );
            assert_eq!(body, "payload");
            {
                // Trailers survive every combination (h1 hops carry them in chunked encoding).
                assert_eq!(
                    trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
                    Some("0"),
                    "{name} → {protocol}"
                );
                assert_eq!(
                    trailers.get("grpc-message").map(|v| v.to_str().unwrap()),
                    Some("ok")
                );
            }
        }
        // Many concurrent requests share the one multiplexed h2 connection.
        if protocol == "http2" {
            let before = up.connections.load(std::sync::atomic::Ordering::SeqCst);
            let mut tasks = Vec::new();
            for _ in 0..20 {
                let url = gw.url("/x");
                tasks.push(tokio::spawn(async move {
                    get(&client(), &url, &[]).await.status
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), 200);
            }
            assert_eq!(
                up.connections.load(std::sync::atomic::Ordering::SeqCst),
                before,
                "no new upstream connections"
            );
        }
    }
}

#[tokio::test]
async fn health_checks_use_the_targets_protocol() {
    let up = Upstream::start("up").await;
    let yaml = config(&up, "http2").replace(
        "protocol: http2,",
        "protocol: http2, health_check: { path: /healthz, interval_ms: 100, timeout_ms: 90, healthy_threshold: 1, unhealthy_threshold: 1 },",
    );
    let gw = TestGateway::start(&yaml).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let probes: Vec<_> = up
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.ends_with("/healthz"))
            .cloned()
            .collect();
        if let Some(p) = probes.first() {
            assert_eq!(
                p.version,
                http::Version::HTTP_2,
                "probe over the target's h2c"
            );
            assert_eq!(p.headers["user-agent"], "portcullis-health-check");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health probe arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client(), &gw.url("/x"), &[]).await.status, 200);
}
