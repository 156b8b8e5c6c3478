//! CORS end to end through real sockets: the matrix {preflight, simple request, no Origin,
//! disallowed origin, `null`, credentialed} × {origin list, wildcard pattern} × {upstream 200,
//! gateway 401, 429, 503}, with the exact allow headers and `Vary` in each cell and the upstream
//! never seeing a preflight; then the upstream's own CORS headers, the defaults' policy on 404s,
//! and report-only mode.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use std::sync::atomic::Ordering;
use support::*;

const KEY_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Routes `/{mode}/{outcome}` for mode `list` (exact origin, credentials) and `pattern`
/// (`https://*.example.com`, no credentials); outcomes `ok` (upstream 200), `auth` (401
/// without a key), `limited` (429 after one request), `down` (503 once the breaker opened).
fn config(up: &Upstream, extra_defaults: &str, extra_routes: &str) -> String {
    let mut routes = String::new();
    for (mode, cors) in [
        ("list", "{ allow_origins: [\"https://app.example.com\"], allow_methods: [GET, PUT], allow_headers: [authorization, content-type], expose_headers: [x-upstream], allow_credentials: true, max_age_s: 600 }"),
        ("pattern", "{ allow_origins: [\"https://*.example.com\"], allow_methods: [GET, PUT], allow_headers: [\"*\"] }"),
    ] {
        for (outcome, extra) in [
            ("ok", "    upstream: up\n".to_string()),
            ("auth", "    upstream: up\n    auth: { api_key: keys }\n".to_string()),
            (
                "limited",
                format!("    upstream: up\n    rate_limits: [one-{mode}]\n"),
            ),
            ("down", "    upstream: down\n".to_string()),
        ] {
            routes.push_str(&format!(
                "  - name: {mode}-{outcome}\n    match: {{ path: {{ prefix: /{mode}/{outcome} }}, methods: [GET] }}\n{extra}    cors: {cors}\n"
            ));
        }
    }
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none{extra_defaults} }}\nauth:\n  api_keys:\n    - {{ name: keys, keys: [{{ id: k1, sha256: {KEY_SHA} }}] }}\nrate_limits:\n  - {{ name: one-list, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001, key: [route] }}\n  - {{ name: one-pattern, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001, key: [route] }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\n  - name: down\n    targets: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 1, open_ms: 600000, half_open_requests: 1 }}\nroutes:\n{routes}{extra_routes}",
        up.addr,
        closed_port()
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Preflight,
    Simple,
    NoOrigin,
    Disallowed,
    Null,
    Credentialed,
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn vary_lists(r: &Reply, name: &str) -> bool {
    let all = vary_tokens(&r.headers);
    let n = all.iter().filter(|t| *t == name).count();
    assert!(n <= 1, "{name} listed {n} times in Vary: {all:?}");
    n == 1
}

async fn request(gw: &TestGateway, path: &str, method: Method, headers: &[(&str, &str)]) -> Reply {
    let mut b = http::Request::builder().method(method).uri(gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn the_matrix() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "", "")).await;
    // Prime: the limit spends its one token, the breaker opens on the first failure.
    for mode in ["list", "pattern"] {
        assert_eq!(
            request(&gw, &format!("/{mode}/limited"), Method::GET, &[])
                .await
                .status,
            200
        );
        let first = request(&gw, &format!("/{mode}/down"), Method::GET, &[])
            .await
            .status;
        assert!(first.is_server_error(), "{first}");
    }
    for (mode, allowed, credentials) in [
        ("list", "https://app.example.com", true),
        ("pattern", "https://tenant.example.com", false),
    ] {
        for (outcome, status) in [("ok", 200), ("auth", 401), ("limited", 429), ("down", 503)] {
            for cell in [
                Cell::Preflight,
                Cell::Simple,
                Cell::NoOrigin,
                Cell::Disallowed,
                Cell::Null,
                Cell::Credentialed,
            ] {
                let path = format!("/{mode}/{outcome}");
                let what = format!("{mode} {outcome} {cell:?}");
                let before = up.arrivals.load(Ordering::SeqCst);
                let r = match cell {
                    Cell::Preflight => {
                        request(
                            &gw,
                            &path,
                            Method::OPTIONS,
                            &[
                                ("origin", allowed),
                                ("access-control-request-method", "PUT"),
                                (
                                    "access-control-request-headers",
                                    "Authorization, Content-Type",
                                ),
                            ],
                        )
                        .await
                    }
                    Cell::Simple => request(&gw, &path, Method::GET, &[("origin", allowed)]).await,
                    Cell::NoOrigin => request(&gw, &path, Method::GET, &[]).await,
                    Cell::Disallowed => {
                        request(
                            &gw,
                            &path,
                            Method::GET,
                            &[("origin", "https://app.example.com.evil.test")],
                        )
                        .await
                    }
                    Cell::Null => request(&gw, &path, Method::GET, &[("origin", "null")]).await,
                    Cell::Credentialed => {
                        request(
                            &gw,
                            &path,
                            Method::GET,
                            &[("origin", allowed), ("cookie", "session=1")],
                        )
                        .await
                    }
                };
                let forwarded = up.arrivals.load(Ordering::SeqCst) - before;
                assert!(
                    vary_lists(&r, "origin"),
                    "{what}: Vary: Origin on every response"
                );
                let allowed_cell =
                    matches!(cell, Cell::Preflight | Cell::Simple | Cell::Credentialed);
                if cell == Cell::Preflight {
                    assert_eq!(r.status, 204, "{what}");
                    assert_eq!(
                        forwarded, 0,
                        "{what}: a preflight never reaches the upstream"
                    );
                    assert_eq!(header(&r, "cache-control"), Some("no-store"), "{what}");
                    if !credentials {
                        // `*` never covers Authorization: the wildcard-headers policy refuses
                        // this preflight, so no allow header at all.
                        for h in [
                            "access-control-allow-origin",
                            "access-control-allow-methods",
                            "access-control-allow-headers",
                        ] {
                            assert_eq!(header(&r, h), None, "{what}: {h}");
                        }
                        continue;
                    }
                    assert_eq!(
                        header(&r, "access-control-allow-methods"),
                        Some("GET, PUT"),
                        "{what}"
                    );
                    assert_eq!(
                        header(&r, "access-control-allow-headers"),
                        Some("authorization, content-type"),
                        "{what}"
                    );
                    assert_eq!(header(&r, "access-control-max-age"), Some("600"), "{what}");
                } else {
                    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
                    assert_eq!(header(&r, "access-control-allow-methods"), None, "{what}");
                    assert_eq!(forwarded, u64::from(outcome == "ok"), "{what}");
                }
                if allowed_cell {
                    assert_eq!(
                        header(&r, "access-control-allow-origin"),
                        Some(allowed),
                        "{what}"
                    );
                    assert_eq!(
                        header(&r, "access-control-allow-credentials"),
                        credentials.then_some("true"),
                        "{what}"
                    );
                    if cell != Cell::Preflight && credentials {
                        assert_eq!(
                            header(&r, "access-control-expose-headers"),
                            Some("x-upstream"),
                            "{what}"
                        );
                    }
                } else {
                    assert_eq!(header(&r, "access-control-allow-origin"), None, "{what}");
                    assert_eq!(
                        header(&r, "access-control-allow-credentials"),
                        None,
                        "{what}"
                    );
                }
            }
            // The wildcard-headers policy allows a preflight that does not ask for Authorization.
            if !credentials {
                let path = format!("/{mode}/{outcome}");
                let r = request(
                    &gw,
                    &path,
                    Method::OPTIONS,
                    &[
                        ("origin", allowed),
                        ("access-control-request-method", "PUT"),
                        ("access-control-request-headers", "x-custom"),
                    ],
                )
                .await;
                assert_eq!(r.status, 204);
                assert_eq!(header(&r, "access-control-allow-origin"), Some(allowed));
                assert_eq!(header(&r, "access-control-allow-headers"), Some("x-custom"));
            }
        }
    }
    // Preflights the policy refuses: 204 without any allow header, never forwarded.
    let before = up.arrivals.load(Ordering::SeqCst);
    for (origin, method) in [
        ("https://evil.test", "PUT"),
        ("null", "PUT"),
        ("https://app.example.com", "DELETE"),
    ] {
        let r = request(
            &gw,
            "/list/ok",
            Method::OPTIONS,
            &[
                ("origin", origin),
                ("access-control-request-method", method),
            ],
        )
        .await;
        assert_eq!(r.status, 204, "{origin} {method}");
        for h in [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-credentials",
        ] {
            assert_eq!(header(&r, h), None, "{origin} {method}: {h}");
        }
        assert!(vary_lists(&r, "origin"));
    }
    // A plain OPTIONS (no preflight headers) is routed as any request: no route takes OPTIONS.
    let r = request(
        &gw,
        "/list/ok",
        Method::OPTIONS,
        &[("origin", "https://app.example.com")],
    )
    .await;
    r.assert_gateway_error(404);
    assert_eq!(up.arrivals.load(Ordering::SeqCst), before);
    assert!(up
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.method != "OPTIONS"));

    let metrics = reqwest_text(&gw, "/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_cors_refused_total{route=\"list-ok\",reason=\"origin\",mode=\"enforce\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "portcullis_cors_refused_total{route=\"list-ok\",reason=\"method\",mode=\"enforce\"} 1"
    ));
}

async fn reqwest_text(gw: &TestGateway, path: &str) -> String {
    get(&client(), &format!("http://{}{path}", gw.admin), &[])
        .await
        .text()
}

#[tokio::test]
async fn upstream_cors_headers_are_replaced_and_vary_merged_and_404s_use_the_defaults() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(
        &up,
        ", cors: { allow_origins: [\"https://default.example.com\"] }",
        "  - name: own\n    match: { path: { prefix: /upstream-cors } }\n    upstream: up\n",
    ))
    .await;
    let r = request(
        &gw,
        "/upstream-cors",
        Method::GET,
        &[("origin", "https://default.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://default.example.com")
    );
    assert_eq!(
        r.headers
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    assert!(vary_lists(&r, "accept-language") && vary_lists(&r, "origin"));
    let r = request(
        &gw,
        "/upstream-cors",
        Method::GET,
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        None,
        "the upstream's `*` is not kept"
    );

    // No route: the gateway's 404 carries the defaults' CORS headers.
    let r = request(
        &gw,
        "/nowhere",
        Method::GET,
        &[("origin", "https://default.example.com")],
    )
    .await;
    r.assert_gateway_error(404);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://default.example.com")
    );
    assert!(vary_lists(&r, "origin"));
}

/// One route `api` for every path, with `policy` (route keys at four spaces) added; its keys
/// start at line 10.
fn one_route(up: &Upstream, policy: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n{policy}",
        up.addr
    )
}

#[tokio::test]
async fn report_only_forwards_and_counts() {
    let up = Upstream::start("up").await;
    let yaml = one_route(
        &up,
        "    cors: { allow_origins: [\"https://app.example.com\"], report_only: true }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let r = request(
        &gw,
        "/upstream-cors",
        Method::GET,
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("*"),
        "left as the upstream sent it"
    );
    let r = request(
        &gw,
        "/x",
        Method::OPTIONS,
        &[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "report-only: the preflight goes upstream");
    assert_eq!(up.last().method, "OPTIONS");
    let metrics = reqwest_text(&gw, "/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_cors_refused_total{route=\"api\",reason=\"origin\",mode=\"report_only\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn credentials_with_a_wildcard_is_a_config_error() {
    let up = Upstream::start("up").await;
    let yaml = one_route(
        &up,
        "    cors:\n      allow_origins: [\"*\"]\n      allow_credentials: true\n",
    );
    let errors = portcullis::compile::text(&yaml, "t.yaml")
        .err()
        .expect("refused");
    let text = errors.to_string();
    assert!(
        text.contains("t.yaml:11") && text.contains("routes[0].cors.allow_origins"),
        "{text}"
    );
}
