//! `/metrics` after a scripted mix of requests: valid Prometheus text, and every counter equal
//! to what the test sent, by label.

mod support;

use std::collections::HashMap;
use support::*;

/// Parses the text exposition strictly enough to catch malformed output: every sample belongs to
/// a family declared with # HELP and # TYPE, names and labels are well-formed, values are numbers.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "family declared twice: {name}"
            );
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "unexpected line {line:?}"
        );
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            typed.contains_key(family) && helped.contains(family),
            "sample before its # TYPE/# HELP: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(
                        k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                        "{line}"
                    );
                    let _ = v;
                }
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[tokio::test]
async fn counters_match_a_scripted_mix_of_requests() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\", token: \"metrics-token-0123456789\" }}\ndefaults: {{ auth: none }}\nauth:\n  api_keys:\n    - {{ name: partners, keys: [{{ id: k1, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, scopes: [read] }}] }}\nrate_limits:\n  - {{ name: tiny, algorithm: token_bucket, capacity: 2, refill_per_second: 0.001, key: [client_ip] }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\n  - {{ name: dead, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ path: {{ prefix: /api }} }}\n    upstream: up\n    rewrite: {{ strip_prefix: /api }}\n  - name: broken\n    match: {{ path: {{ prefix: /broken }} }}\n    upstream: dead\n  - name: health\n    match: {{ path: {{ exact: /healthz }} }}\n    direct_response: {{ status: 200, body: ok }}\n  - name: limited\n    match: {{ path: {{ prefix: /limited }} }}\n    upstream: up\n    rate_limits: [tiny]\n  - name: secure\n    match: {{ path: {{ prefix: /secure }} }}\n    upstream: up\n    auth: {{ api_key: partners }}\n  - name: admin-only\n    match: {{ path: {{ prefix: /admin-only }} }}\n    upstream: up\n    auth: {{ api_key: partners }}\n    authorization: {{ required_scopes: [admin] }}\n",
        up.addr,
        closed_port()
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    for _ in 0..7 {
        assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 200);
    }
    for _ in 0..3 {
        let post = http::Request::post(gw.url("/api/upload"))
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'z';
                100
            ])))
            .unwrap();
        assert_eq!(send(&c, post).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/api/status/503"), &[]).await.status, 503);
    }
    for _ in 0..4 {
        assert_eq!(get(&c, &gw.url("/nowhere"), &[]).await.status, 404);
    }
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/broken"), &[]).await.status, 502);
    }
    assert_eq!(get(&c, &gw.url("/healthz"), &[]).await.status, 200);
    for i in 0..6 {
        let want = if i < 2 { 200 } else { 429 };
        assert_eq!(get(&c, &gw.url("/limited"), &[]).await.status, want);
    }
    // 401s: no key (3), a wrong key (2); one success; a 403 for a missing scope.
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/secure"), &[]).await.status, 401);
    }
    for _ in 0..2 {
        let r = get(&c, &gw.url("/secure"), &[("x-api-key", "nope")]).await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        get(&c, &gw.url("/secure"), &[("x-api-key", "test")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&c, &gw.url("/admin-only"), &[("x-api-key", "test")])
            .await
            .status,
        403
    );
    // A reload that fails and one that succeeds.
    gw.write_config("listeners: [oops");
    assert!(gw.gateway.reload().await.is_err());
    gw.write_config(&yaml.replace("body: ok", "body: fine"));
    gw.gateway.reload().await.unwrap();

    let url = format!("http://{}/metrics", gw.admin);
    get(&c, &url, &[]).await.assert_gateway_error(401);
    let r = get(
        &c,
        &url,
        &[("authorization", "Bearer metrics-token-0123456789")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = parse(&r.text());
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("missing series {k}\n{}", r.text()))
    };

    assert_eq!(
        get(r#"portcullis_requests_total{route="api",method="GET",status_class="2xx"}"#),
        7.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="api",method="POST",status_class="2xx"}"#),
        3.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="api",method="GET",status_class="5xx"}"#),
        2.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="",method="GET",status_class="4xx"}"#),
        4.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="broken",method="GET",status_class="5xx"}"#),
        5.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="health",method="GET",status_class="2xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="limited",method="GET",status_class="2xx"}"#),
        2.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="limited",method="GET",status_class="4xx"}"#),
        4.0
    );
    assert_eq!(
        get(r#"portcullis_ratelimit_decisions_total{limit="tiny",result="allowed"}"#),
        2.0
    );
    assert_eq!(
        get(r#"portcullis_ratelimit_decisions_total{limit="tiny",result="limited"}"#),
        4.0
    );
    assert_eq!(
        get(r#"portcullis_ratelimit_decisions_total{limit="tiny",result="shadow_limited"}"#),
        0.0
    );
    assert_eq!(get(r#"portcullis_ratelimit_local_keys{limit="tiny"}"#), 1.0);
    assert_eq!(
        get(r#"portcullis_requests_total{route="secure",method="GET",status_class="4xx"}"#),
        5.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="secure",method="GET",status_class="2xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"portcullis_auth_failures_total{provider="partners",reason="missing_credentials"}"#),
        3.0
    );
    assert_eq!(
        get(r#"portcullis_auth_failures_total{provider="partners",reason="unknown_api_key"}"#),
        2.0
    );
    assert_eq!(
        get(r#"portcullis_auth_successes_total{provider="partners"}"#),
        2.0
    );
    assert_eq!(
        get(r#"portcullis_authz_denials_total{route="admin-only"}"#),
        1.0
    );
    assert_eq!(
        get(r#"portcullis_requests_total{route="admin-only",method="GET",status_class="4xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"portcullis_request_duration_seconds_count{route="api"}"#),
        12.0
    );
    assert_eq!(
        get(r#"portcullis_request_duration_seconds_bucket{route="api",le="+Inf"}"#),
        12.0
    );
    assert_eq!(get(r#"portcullis_request_bytes_total{route="api"}"#), 300.0);
    assert!(get(r#"portcullis_response_bytes_total{route="api"}"#) > 0.0);
    assert_eq!(
        get(r#"portcullis_upstream_duration_seconds_count{upstream="up"}"#),
        15.0
    );
    assert_eq!(
        get(r#"portcullis_config_reloads_total{result="success"}"#),
        1.0
    );
    assert_eq!(
        get(r#"portcullis_config_reloads_total{result="failure"}"#),
        1.0
    );
    assert_eq!(get("portcullis_config_version"), 2.0);
    assert_eq!(
        get(&format!(
            r#"portcullis_target_healthy{{upstream="up",target="{}"}}"#,
            up.addr
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            r#"portcullis_pool_connections_created_total{{upstream="up",target="{}"}}"#,
            up.addr
        )),
        1.0
    );
    assert_eq!(get("portcullis_requests_in_flight"), 0.0);
    assert!(m
        .keys()
        .any(|k| k.starts_with("portcullis_build_info{version=")));
    // Cardinality is bounded by the config: no raw paths in any label.
    assert!(!r.text().contains("/api/x") && !r.text().contains("/nowhere"));
}

/// Which instance, which failure: `--instance-id` in `target_info`, the instance response
/// header and the access log; every kind of failure counted by class and refusing policy.
#[tokio::test]
async fn errors_are_counted_by_class_and_policy_and_the_instance_is_named() {
    let up = Upstream::start("up").await;
    let dead = closed_port();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "{{LISTEN}}" }}]
admin: {{ address: "{{ADMIN}}" }}
defaults: {{ auth: none }}
observability:
  instance_header: X-Served-By
  access_log: {{ destination: "{}" }}
rate_limits:
  - {{ name: one, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001 }}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
  - {{ name: dead, targets: [{{ address: "{dead}" }}], connect_timeout_ms: 300 }}
routes:
  - name: ok
    match: {{ path: {{ prefix: /ok }} }}
    upstream: up
    rewrite: {{ strip_prefix: /ok }}
  - name: slow
    match: {{ path: {{ prefix: /sleep }} }}
    upstream: up
    timeout_ms: 200
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: up
    rate_limits: [one]
  - name: small
    match: {{ path: {{ prefix: /small }} }}
    upstream: up
    request: {{ max_body_bytes: 10 }}
  - name: dead
    match: {{ path: {{ prefix: /dead }} }}
    upstream: dead
"#,
        log.display(),
        up.addr
    );
    let gw = GatewayProcess::spawn_with_args(&yaml, 1, &["--instance-id", "gw-7"]).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", gw.addr);
    let r = get(&c, &url("/ok/echo"), &[("x-request-id", "inst-1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-served-by"], "gw-7");
    assert_eq!(get(&c, &url("/ok/status/503"), &[]).await.status, 503);
    assert_eq!(get(&c, &url("/ok/status/404"), &[]).await.status, 404);
    assert_eq!(get(&c, &url("/sleep/1000"), &[]).await.status, 504);
    assert_eq!(get(&c, &url("/limited"), &[]).await.status, 200);
    assert_eq!(get(&c, &url("/limited"), &[]).await.status, 429);
    let big = http::Request::post(url("/small"))
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            100
        ])))
        .unwrap();
    assert_eq!(send(&c, big).await.status, 413);
    assert_eq!(get(&c, &url("/dead"), &[]).await.status, 502);
    let nowhere = get(&c, &url("/nowhere"), &[]).await;
    nowhere.assert_gateway_error(404);
    assert_eq!(
        nowhere.headers["x-served-by"], "gw-7",
        "the gateway's own answers too"
    );

    let text = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    let samples = parse(&text);
    let errors = |route: &str, class: &str, policy: &str| {
        samples
            .get(&format!(
                "portcullis_request_errors_total{{route=\"{route}\",class=\"{class}\",policy=\"{policy}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(errors("ok", "upstream_5xx", ""), 1.0, "{text}");
    assert_eq!(errors("ok", "upstream_4xx", ""), 1.0);
    assert_eq!(errors("slow", "timeout", ""), 1.0);
    assert_eq!(errors("limited", "refused", "rate_limit"), 1.0);
    assert_eq!(errors("small", "refused", "size"), 1.0);
    assert_eq!(errors("dead", "connect_failure", ""), 1.0);
    assert_eq!(errors("", "refused", "no_route"), 1.0);
    let total_errors: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("portcullis_request_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total_errors, 7.0, "no success is counted as an error");
    assert_eq!(
        samples.get(&format!(
            "target_info{{instance_id=\"gw-7\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(&1.0),
        "{text}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("\"inst-1\"")) {
            break serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(line["instance"], "gw-7");
}
