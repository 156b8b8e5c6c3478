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
    assert_eq!(problem["title"], "request body does not match the schema");
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
    assert_eq!(raw_json(&resp)["title"], "request body is not valid JSON");
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let resp = post(gw.addr, "/users", ct, good).await;
        assert_eq!(raw_status(&resp), 415, "{ct:?}: {resp}");
        assert!(raw_json(&resp)["error"].is_string());
    }
    // A body-carrying method with no body.
    let resp = post(gw.addr, "/users", "application/json", "").await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(raw_json(&resp)["title"], "request body is required");
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
