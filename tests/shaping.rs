//! Request and response shaping through real sockets: JSON Schema validation of request bodies
//! (every refusal also checked at the upstream: it received nothing), JSON field filtering of
//! responses, and tenants from host names.

mod support;

use std::time::Duration;
use support::*;

fn base(upstreams: &str, routes: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\ndefaults:\n  auth: none\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

fn upstream_yaml(name: &str, addr: std::net::SocketAddr) -> String {
    format!(
        "  - name: {name}\n    targets: [{{ address: \"{addr}\" }}]\n    connect_timeout_ms: 500\n"
    )
}

/// A POST with `content_type` (none when empty) and `body`, by hand so nothing is added.
async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: &str) -> String {
    let ct = if content_type.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\n")
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes(), Duration::from_secs(5)).await
}

fn header_of<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

const USER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name", "email"],
  "additionalProperties": false,
  "properties": {
    "name": { "type": "string", "minLength": 1 },
    "email": { "type": "string", "pattern": "^[^@]+@[^@]+$" },
    "age": { "type": "integer", "minimum": 0 },
    "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 3 }
  }
}"#;

#[tokio::test]
async fn json_schema_refuses_bad_bodies_with_problem_details_and_forwards_good_ones() {
    let up = Upstream::start("up").await;
    let routes = "  - name: users\n    match: { path: { prefix: /users } }\n    upstream: up\n    request: { json_schema: user.schema.json, max_body_bytes: 4096 }\n  - name: inline\n    match: { path: { prefix: /inline } }\n    upstream: up\n    request:\n      json_schema: { type: object, required: [id], properties: { id: { type: integer } } }\n";
    let gw = TestGateway::start_with_files(
        &base(&upstream_yaml("up", up.addr), routes),
        &[("user.schema.json", USER_SCHEMA)],
    )
    .await;

    // Good bodies go through unchanged, with any JSON media type.
    let good = r#"{"name":"Ada","email":"ada@example.com","age":36,"tags":["x"]}"#;
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.acme.user+json",
    ] {
        let resp = post(gw.addr, "/users", ct, good).await;
        assert_eq!(raw_status(&resp), 200, "{ct}: {resp}");
        assert_eq!(up.last().body_len, good.len() as u64);
    }
    let forwarded = up.count();

    // Every failure listed, as JSON Pointers with the keyword, none of the values echoed.
    let bad = r#"{"name":"","email":"secret-token-123","age":-4,"tags":["a",7,"c","d"],"role":"admin-leak"}"#;
    let resp = post(gw.addr, "/users", "application/json", bad).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(
        header_of(&resp, "content-type"),
        Some("application/problem+json")
    );
    let problem = raw_json(&resp);
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["type"], "about:blank");
    assert_eq!(
        problem["title"], "Bad Request",
        "the status phrase, with about:blank"
    );
    assert_eq!(problem["error"], "request body does not match the schema");
    assert_eq!(
        problem["detail"],
        "request body does not match the schema: 6 schema error(s)"
    );
    assert!(problem["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    let mut got: Vec<(String, String)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_string(),
                e["keyword"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [
        ("/age", "minimum"),
        ("/email", "pattern"),
        ("/name", "minLength"),
        ("/role", "additionalProperties"),
        ("/tags", "maxItems"),
        ("/tags/1", "type"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(got, want, "{problem}");
    for leaked in ["secret-token-123", "admin-leak", "-4"] {
        assert!(!resp.contains(leaked), "the answer echoes {leaked}: {resp}");
    }

    // Missing required members, from the inline schema.
    let resp = post(gw.addr, "/inline", "application/json", r#"{"id":"7"}"#).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let problem = raw_json(&resp);
    assert_eq!(problem["errors"][0]["pointer"], "/id");
    assert_eq!(problem["errors"][0]["keyword"], "type");
    let resp = post(gw.addr, "/inline", "application/json", "{}").await;
    assert_eq!(raw_json(&resp)["errors"][0]["keyword"], "required");

    // Not JSON at all: 400 problem; not declared as JSON (or not declared): 415.
    let resp = post(gw.addr, "/users", "application/json", "{\"name\": ").await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(raw_json(&resp)["error"], "request body is not valid JSON");
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let resp = post(gw.addr, "/users", ct, good).await;
        assert_eq!(raw_status(&resp), 415, "{ct:?}: {resp}");
        assert!(raw_json(&resp)["error"].is_string());
    }
    // A body-carrying method with no body.
    let resp = post(gw.addr, "/users", "application/json", "").await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(raw_json(&resp)["error"], "request body is required");
    // Bounded before it is parsed: declared or chunked, past max_body_bytes is 413.
    let big = format!(r#"{{"name":"{}","email":"a@b"}}"#, "x".repeat(5000));
    let resp = post(gw.addr, "/users", "application/json", &big).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
    let chunked = format!(
        "POST /users HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let resp = raw(gw.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 413, "{resp}");
    assert_eq!(up.count(), forwarded, "a refused body reached the upstream");

    // A chunked good body is checked whole, then forwarded with its length.
    let chunked = format!(
        "POST /users HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{good}\r\n0\r\n\r\n",
        good.len()
    );
    let resp = raw(gw.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().body_len, good.len() as u64);
    // GET without a body is not validated.
    let r = get(&client(), &gw.url("/users/1"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_direct_response_route_validates_before_it_answers() {
    let routes = "  - name: mock\n    match: { path: { prefix: /mock } }\n    direct_response: { status: 201, body: created }\n    request:\n      json_schema: { type: object, required: [id] }\n";
    let gw = TestGateway::start(&base("", routes).replace("upstreams:\n", "")).await;
    let resp = post(gw.addr, "/mock", "application/json", r#"{"id":1}"#).await;
    assert_eq!(raw_status(&resp), 201, "{resp}");
    let resp = post(gw.addr, "/mock", "application/json", r#"{"x":1}"#).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(raw_json(&resp)["errors"][0]["pointer"], "/id");
}

#[tokio::test]
async fn response_json_removes_and_renames_fields_within_its_bound() {
    let up = Upstream::start("up").await;
    let routes = r#"  - name: shape
    match: { path: { prefix: /body } }
    upstream: up
    response:
      json: { remove: ["$.items[*].tags"], rename: { name: title } }
  - name: small
    match: { path: { prefix: /small } }
    upstream: up
    rewrite: { replace_prefix: { from: /small, to: /body } }
    response:
      json: { remove: ["$.items"], max_bytes: 1024 }
  - name: echo
    match: { path: { prefix: /echo } }
    upstream: up
    response:
      json: { remove: ["$.headers", "$.upstream"], rename: { body_bytes: bodyBytes } }
"#;
    let gw = TestGateway::start(&base(&upstream_yaml("up", up.addr), routes)).await;
    let c = client();
    let original: serde_json::Value = serde_json::from_slice(&json_document()).unwrap();
    let mut expected = original.clone();
    for item in expected["items"].as_array_mut().unwrap() {
        let o = item.as_object_mut().unwrap();
        o.remove("tags");
        let name = o.remove("name").unwrap();
        o.insert("title".into(), name);
    }
    // Declared length and chunked alike: shaped, the length dropped, the ETag weakened.
    for path in ["/body/json", "/body/chunked-json"] {
        let r = get(&c, &gw.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json(), expected, "{path}");
        assert!(r.headers.get("content-length").is_none_or(|v| v
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
            == r.body.len()));
        assert!(!r.text().contains("\"tags\""));
        if path == "/body/json" {
            assert_eq!(r.headers["etag"], "W/\"v1\"");
        }
    }
    // On the wire (HTTP/1.1): chunked, never a stale Content-Length.
    let resp = raw(
        gw.addr,
        b"GET /body/json HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    // Over the bound (declared, or found while streaming): unchanged, strong ETag kept.
    let r = get(&c, &gw.url("/small/json"), &[]).await;
    assert_eq!(r.body, json_document());
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert_eq!(
        r.headers["content-length"],
        json_document().len().to_string()
    );
    let r = get(&c, &gw.url("/small/chunked-json"), &[]).await;
    assert_eq!(r.body, json_document(), "passed through after the bound");
    // Not JSON: unchanged.
    let r = get(&c, &gw.url("/body/png"), &[]).await;
    assert_eq!(r.body, json_document());

    // The echo upstream's answer: internal fields gone, a key renamed, the rest as it was.
    let r = get(&c, &gw.url("/echo/x?q=1"), &[]).await;
    let v = r.json();
    assert!(
        v.get("headers").is_none() && v.get("upstream").is_none(),
        "{v}"
    );
    assert_eq!(v["bodyBytes"], 0);
    assert_eq!(v["uri"], "/echo/x?q=1");

    let metrics = reqwest_text(&format!("http://{}/metrics", gw.admin)).await;
    for (route, result, want) in [
        ("shape", "shaped", 3),
        ("echo", "shaped", 1),
        ("small", "too_large", 2),
        ("shape", "not_json", 1),
    ] {
        let line =
            format!("portcullis_response_json_total{{route=\"{route}\",result=\"{result}\"}}");
        let got: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        assert_eq!(got, want, "{line}\n{metrics}");
    }
}

async fn reqwest_text(url: &str) -> String {
    get(&client(), url, &[]).await.text()
}

const ACME_KEY_SHA: &str = "307c609f87da43c3d563428a4f7efdf9857f4871fd10465732c4ab11a985a08c";
const GLOBEX_KEY_SHA: &str = "4fe6ae1bd397d68b149f8a86069f5e6806a937d7d0b2f31830c48008b268bda0";

fn tenant_config(up: &Upstream, extra_top: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
auth:
  api_keys:
    - name: keys
      header: X-API-Key
      keys:
        - {{ id: acme, sha256: "{ACME_KEY_SHA}", tenant: acme }}
        - {{ id: globex, sha256: "{GLOBEX_KEY_SHA}", tenant: globex }}
tenants:
  records:
    - {{ id: acme, status: ACTIVE }}
    - {{ id: globex, status: SUSPENDED }}
    - {{ id: umbrella, status: ACTIVE }}
{extra_top}rate_limits:
  - {{ name: per-tenant, algorithm: sliding_window, limit: 5, window_s: 60, key: [tenant] }}
routes:
  - name: public-tenant
    match: {{ hosts: ["{{tenant}}.api.test"], path: {{ prefix: /pub }} }}
    upstream: up
    auth: none
    rate_limits: [per-tenant]
    headers: {{ request: {{ set: {{ x-tenant-copy: "${{tenant}}" }} }} }}
  - name: keyed
    match: {{ hosts: ["{{tenant}}.api.test"], path: {{ prefix: /keyed }} }}
    upstream: up
    auth: {{ api_key: keys }}
  - name: active-only
    match: {{ hosts: ["{{tenant}}.api.test"], path: {{ prefix: /active }} }}
    upstream: up
    auth: none
    authorization: {{ tenant_status: [ACTIVE] }}
  - name: wildcard
    match: {{ hosts: ["*.api.test"], path: {{ prefix: / }} }}
    upstream: up
    auth: none
"#,
        up.addr
    )
}

#[tokio::test]
async fn a_host_label_is_the_tenant_forwarded_limited_and_checked_against_the_credential() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&tenant_config(&up, "")).await;
    let c = client();

    // Public: the label is the tenant; the client's own tenant header never passes.
    let r = get(
        &c,
        &gw.url("/pub/x"),
        &[("host", "Acme.api.test:8080"), ("x-tenant-id", "globex")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(
        seen.headers["x-tenant-copy"], "acme",
        "${{tenant}} in templates"
    );
    // One label only: a deeper host falls to the `*.` route, and has no tenant.
    let r = get(
        &c,
        &gw.url("/pub/x"),
        &[("host", "a.b.api.test"), ("x-tenant-id", "evil")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(
        seen.headers.get("x-tenant-id").is_none(),
        "a client copy passed"
    );
    assert!(seen.uri.starts_with("/pub/x"));

    // Authenticated: the credential's tenant must be the host's.
    let r = get(
        &c,
        &gw.url("/keyed/1"),
        &[("host", "acme.api.test"), ("x-api-key", "acme-secret")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-tenant-id"], "acme");
    let before = up.count();
    let r = get(
        &c,
        &gw.url("/keyed/1"),
        &[("host", "globex.api.test"), ("x-api-key", "acme-secret")],
    )
    .await;
    r.assert_gateway_error(403);
    assert!(
        r.json()["error"].as_str().unwrap().contains("tenant"),
        "{}",
        r.text()
    );
    assert_eq!(up.count(), before, "a mismatch reached the upstream");

    // Per-tenant limits: acme spends its 5; umbrella keeps its own.
    let host = |t: &str| format!("{t}.api.test");
    let mut acme_statuses = Vec::new();
    for _ in 0..6 {
        let r = get(&c, &gw.url("/pub/y"), &[("host", &host("acme"))]).await;
        acme_statuses.push(r.status.as_u16());
    }
    // The first request above used one of acme's 5.
    assert_eq!(acme_statuses, [200, 200, 200, 200, 429, 429]);
    for i in 0..5 {
        let r = get(&c, &gw.url("/pub/y"), &[("host", &host("umbrella"))]).await;
        assert_eq!(r.status, 200, "umbrella request {i}");
        let header = r.headers["ratelimit"].to_str().unwrap();
        assert!(header.contains(&format!(";r={};", 4 - i)), "{header}");
    }
    // Tenant status from the records.
    let r = get(&c, &gw.url("/active"), &[("host", &host("acme"))]).await;
    assert_eq!(r.status, 200);
    let before = up.count();
    let r = get(&c, &gw.url("/active"), &[("host", &host("globex"))]).await;
    r.assert_gateway_error(403);
    assert_eq!(r.json()["error"], "forbidden: tenant globex is SUSPENDED");
    let r = get(&c, &gw.url("/active"), &[("host", &host("initech"))]).await;
    r.assert_gateway_error(403);
    assert_eq!(r.json()["error"], "forbidden: tenant initech is not known");
    assert_eq!(up.count(), before, "a refused tenant reached the upstream");

    // Counted by tenant (listed tenants by name, the rest as `other`).
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("portcullis_tenant_requests_total{tenant=\"acme\"} 9"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_tenant_requests_total{tenant=\"other\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn tenant_status_from_redis_with_a_defined_answer_while_redis_is_down() {
    let up = Upstream::start("up").await;
    let mut redis = RedisServer::start().await;
    let extra = format!("redis: {{ url: \"{}\", timeout_ms: 200 }}\n", redis.url());
    let yaml = tenant_config(&up, &extra).replace(
        "    - { id: umbrella, status: ACTIVE }\n",
        "    - { id: umbrella, status: ACTIVE }\n  status_source: { redis_key_prefix: \"ts:\", cache_s: 1, stale_s: 60 }\n",
    );
    redis.command(&["SET", "ts:initech", "ACTIVE"]).await;
    redis.command(&["SET", "ts:globex", "ACTIVE"]).await;
    redis.command(&["SET", "ts:hooli", "SUSPENDED"]).await;
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let status = |t: &'static str| {
        let c = c.clone();
        let url = gw.url("/active");
        async move {
            get(&c, &url, &[("host", &format!("{t}.api.test"))])
                .await
                .status
                .as_u16()
        }
    };
    // Redis first (globex is ACTIVE there, SUSPENDED in the file), then the records.
    assert_eq!(status("initech").await, 200);
    assert_eq!(status("globex").await, 200);
    assert_eq!(status("hooli").await, 403);
    assert_eq!(status("acme").await, 200, "not in Redis: the record");
    // A change in Redis is seen once the short cache lapses.
    redis.command(&["SET", "ts:initech", "SUSPENDED"]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status("initech").await, 403);
    assert_eq!(status("globex").await, 200);

    // Redis down: what was read is used (stale), then the records; the unknown get 503.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        status("globex").await,
        200,
        "stale value while Redis is down"
    );
    assert_eq!(
        status("initech").await,
        403,
        "stale value while Redis is down"
    );
    assert_eq!(
        status("umbrella").await,
        200,
        "the record while Redis is down"
    );
    let r = get(&c, &gw.url("/active"), &[("host", "wayne.api.test")]).await;
    r.assert_gateway_error(503);
    assert_eq!(r.headers["retry-after"], "1");
}

#[tokio::test]
async fn one_tenant_flooding_past_its_limit_leaves_another_tenants_limit_alone() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&tenant_config(&up, "")).await;
    let c = client();
    // acme sends 200 requests at once (5 admitted, the rest refused) while umbrella sends its 5.
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/pub/flood"));
            tokio::spawn(async move {
                get(&c, &url, &[("host", "acme.api.test")])
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    let mut umbrella = Vec::new();
    for _ in 0..5 {
        let r = get(&c, &gw.url("/pub/mine"), &[("host", "umbrella.api.test")]).await;
        umbrella.push((
            r.status.as_u16(),
            r.headers["ratelimit"].to_str().unwrap().to_string(),
        ));
    }
    let mut admitted = 0;
    for f in flood {
        match f.await.unwrap() {
            200 => admitted += 1,
            429 => {}
            other => panic!("acme got {other}"),
        }
    }
    assert_eq!(admitted, 5, "acme's own limit");
    for (i, (status, header)) in umbrella.iter().enumerate() {
        assert_eq!(*status, 200, "umbrella request {i}");
        assert!(header.contains(&format!(";r={};", 4 - i)), "{header}");
    }
}

#[tokio::test]
async fn the_host_tenant_is_in_the_access_log_and_in_response_templates() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let extra = format!(
        "observability:\n  access_log: {{ destination: \"{}\" }}\n",
        log.display()
    );
    let yaml = tenant_config(&up, &extra).replace(
        "    headers: { request: { set: { x-tenant-copy: \"${tenant}\" } } }\n",
        "    headers: { request: { set: { x-tenant-copy: \"${tenant}\" } }, response: { set: { x-served-tenant: \"${tenant}\" } } }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let r = get(
        &client(),
        &gw.url("/pub/z"),
        &[("host", "umbrella.api.test"), ("x-request-id", "t-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-served-tenant"], "umbrella");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("\"t-1\"")) {
            break serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["tenant"], "umbrella", "{line}");
}
