//! The routing precedence table, through real sockets: each route answers with its own name,
//! so every case checks which route a real request reached.

mod support;

use support::*;

/// A route that answers with its name. `m` is the YAML of its `match` block.
fn route(name: &str, m: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    match: {m}\n{extra}    direct_response: {{ status: 200, body: {name}, headers: {{ x-route: {name} }} }}\n"
    )
}

fn config(admin_first: bool) -> String {
    let v1_all = route("v1-all", "{ path: { prefix: /v1 } }", "");
    let v1_admin = route("v1-admin", "{ path: { prefix: /v1/admin } }", "");
    let (first, second) = if admin_first {
        (v1_admin, v1_all)
    } else {
        (v1_all, v1_admin)
    };
    let mut routes = String::new();
    routes.push_str(&first);
    routes.push_str(&second);
    for (name, m, extra) in [
        ("v1-status", "{ path: { exact: /v1/status } }", ""),
        ("v2-prefix", "{ path: { prefix: /v2 } }", ""),
        ("items-regex", "{ path: { regex: \"^/v[0-9]+/items/[0-9]+$\" } }", ""),
        // Hosts
        ("host-exact", "{ hosts: [api.example.com], path: { prefix: /h } }", ""),
        ("host-exact-root", "{ hosts: [api.example.com], path: { prefix: / } }", ""),
        ("host-wild-api", "{ hosts: [\"*.api.example.com\"], path: { prefix: /h } }", ""),
        ("host-wild", "{ hosts: [\"*.example.com\"], path: { prefix: /h } }", ""),
        ("host-wild-deep", "{ hosts: [\"*.example.com\"], path: { prefix: /deep/admin } }", ""),
        ("host-any", "{ path: { prefix: /h } }", ""),
        ("only-any", "{ path: { exact: /only-any } }", ""),
        // Methods
        ("m-any", "{ path: { exact: /m } }", ""),
        ("m-get", "{ path: { exact: /m }, methods: [GET] }", ""),
        ("m-post", "{ path: { exact: /m }, methods: [POST, PUT] }", ""),
        // Headers
        ("hdr-default", "{ path: { exact: /hdr } }", ""),
        ("hdr-canary", "{ path: { exact: /hdr }, headers: [{ name: x-canary, value: \"true\" }] }", ""),
        ("hdr-two", "{ path: { exact: /hdr }, headers: [{ name: x-canary, value: \"true\" }, { name: x-beta }] }", ""),
        ("hdr-regex", "{ path: { exact: /hdr }, headers: [{ name: x-ver, regex: \"^2\\\\.\" }] }", "    priority: 1\n"),
        // Query parameters: after headers in precedence
        ("q-default", "{ path: { exact: /q } }", ""),
        ("q-version", "{ path: { exact: /q }, query: [{ name: version, value: \"2\" }] }", ""),
        ("q-two", "{ path: { exact: /q }, query: [{ name: version, value: \"2\" }, { name: debug, present: true }] }", ""),
        ("q-regex", "{ path: { exact: /q }, query: [{ name: fmt, regex: \"^(csv|tsv)$\" }] }", "    priority: 1\n"),
        ("q-header", "{ path: { exact: /q }, headers: [{ name: x-q }] }", ""),
        // Priority, then file order
        ("p-low", "{ path: { exact: /p } }", ""),
        ("p-high", "{ path: { exact: /p } }", "    priority: 10\n"),
        ("f-a", "{ path: { exact: /f }, headers: [{ name: x-a }] }", ""),
        ("f-b", "{ path: { exact: /f }, headers: [{ name: x-b }] }", ""),
    ] {
        routes.push_str(&route(name, m, extra));
    }
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\ndefaults:\n  auth: none\nroutes:\n{routes}"
    )
}

/// (method, host, path, headers, expected route or status)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const CASES: &[Case] = &[
    // --- shadowing pair: the longer prefix wins whatever the file order
    ("GET", "x.test", "/v1/admin/users", &[], "v1-admin"),
    ("GET", "x.test", "/v1/admin", &[], "v1-admin"),
    ("GET", "x.test", "/v1/admin/", &[], "v1-admin"),
    ("GET", "x.test", "/v1/adminx", &[], "v1-all"),
    ("GET", "x.test", "/v1/other", &[], "v1-all"),
    ("GET", "x.test", "/v1", &[], "v1-all"),
    // --- exact beats prefix beats regex
    ("GET", "x.test", "/v1/status", &[], "v1-status"),
    ("GET", "x.test", "/v1/status/x", &[], "v1-all"),
    ("GET", "x.test", "/v2/items/5", &[], "v2-prefix"),
    ("GET", "x.test", "/v3/items/5", &[], "items-regex"),
    ("GET", "x.test", "/v3/items/x", &[], "404"),
    ("GET", "x.test", "/nothing", &[], "404"),
    // --- path normalization: bypass attempts land on the protected route or are refused;
    // `..` in any spelling is refused by the built-in traversal rules (on by default)
    ("GET", "x.test", "/v1/public/../admin/x", &[], "400"),
    ("GET", "x.test", "//v1//admin", &[], "v1-admin"),
    ("GET", "x.test", "/v1/%61dmin/x", &[], "v1-admin"),
    ("GET", "x.test", "/v1/%2e%2e/v1/admin", &[], "400"),
    ("GET", "x.test", "/v1/./admin", &[], "v1-admin"),
    ("GET", "x.test", "/x/../../v1/admin", &[], "400"),
    ("GET", "x.test", "/v1/%2E/admin/%2e/x", &[], "v1-admin"),
    ("GET", "x.test", "/v1/admin%2Fx", &[], "400"),
    ("GET", "x.test", "/v1%2fadmin", &[], "400"),
    ("GET", "x.test", "/v1/admin%5cx", &[], "400"),
    ("GET", "x.test", "/v1/%zz", &[], "400"),
    // --- hosts: exact beats wildcard, longest suffix wins, port and case ignored
    ("GET", "api.example.com", "/h", &[], "host-exact"),
    ("GET", "API.Example.COM:8080", "/h", &[], "host-exact"),
    ("GET", "api.example.com.", "/h", &[], "host-exact"),
    ("GET", "a.api.example.com", "/h", &[], "host-wild-api"),
    ("GET", "a.b.api.example.com", "/h", &[], "host-wild-api"),
    ("GET", "other.example.com", "/h", &[], "host-wild"),
    ("GET", "example.com", "/h", &[], "host-any"),
    ("GET", "unknown.org", "/h", &[], "host-any"),
    // exact host tier first, even against a more specific wildcard path
    (
        "GET",
        "api.example.com",
        "/deep/admin",
        &[],
        "host-exact-root",
    ),
    ("GET", "x.example.com", "/deep/admin", &[], "host-wild-deep"),
    // a host tier without a matching route falls through to the next tier
    ("GET", "a.api.example.com", "/only-any", &[], "only-any"),
    // --- methods: listed methods beat a route for any method
    ("GET", "x.test", "/m", &[], "m-get"),
    ("POST", "x.test", "/m", &[], "m-post"),
    ("PUT", "x.test", "/m", &[], "m-post"),
    ("DELETE", "x.test", "/m", &[], "m-any"),
    // --- header predicates: more predicates first
    (
        "GET",
        "x.test",
        "/hdr",
        &[("x-canary", "true")],
        "hdr-canary",
    ),
    ("GET", "x.test", "/hdr", &[], "hdr-default"),
    (
        "GET",
        "x.test",
        "/hdr",
        &[("x-canary", "false")],
        "hdr-default",
    ),
    (
        "GET",
        "x.test",
        "/hdr",
        &[("x-canary", "true"), ("x-beta", "1")],
        "hdr-two",
    ),
    ("GET", "x.test", "/hdr", &[("x-ver", "2.1")], "hdr-regex"),
    ("GET", "x.test", "/hdr", &[("x-ver", "3.1")], "hdr-default"),
    // --- query predicates: more first, after the header count; decoded, first occurrence
    ("GET", "x.test", "/q", &[], "q-default"),
    ("GET", "x.test", "/q?version=2", &[], "q-version"),
    ("GET", "x.test", "/q?a=1&version=%32", &[], "q-version"),
    ("GET", "x.test", "/q?version=3", &[], "q-default"),
    ("GET", "x.test", "/q?version=3&version=2", &[], "q-default"),
    ("GET", "x.test", "/q?Version=2", &[], "q-default"),
    ("GET", "x.test", "/q?version=2&debug", &[], "q-two"),
    ("GET", "x.test", "/q?debug=&version=2", &[], "q-two"),
    ("GET", "x.test", "/q?fmt=csv", &[], "q-regex"),
    ("GET", "x.test", "/q?fmt=json", &[], "q-default"),
    // one header predicate outranks two query predicates
    (
        "GET",
        "x.test",
        "/q?version=2&debug",
        &[("x-q", "1")],
        "q-header",
    ),
    // --- priority, then file order
    ("GET", "x.test", "/p", &[], "p-high"),
    ("GET", "x.test", "/f", &[("x-a", "1"), ("x-b", "1")], "f-a"),
    ("GET", "x.test", "/f", &[("x-b", "1")], "f-b"),
];

/// With the traversal rules off, dot segments are resolved before routing instead: every
/// spelling lands on the route its normal form reaches.
const DOT_SEGMENT_CASES: &[Case] = &[
    ("GET", "x.test", "/v1/public/../admin/x", &[], "v1-admin"),
    ("GET", "x.test", "/v1/%2e%2e/v1/admin", &[], "v1-admin"),
    ("GET", "x.test", "/x/../../v1/admin", &[], "v1-admin"),
    ("GET", "x.test", "/v1/admin/../status", &[], "v1-status"),
    ("GET", "x.test", "/v1/.%2E/v1/admin%2Fx", &[], "400"),
];

const TRAVERSAL_RULES_OFF: &str = "edge_rules: { disable: [path-traversal, encoded-traversal] }\n";

#[tokio::test]
async fn dot_segments_are_resolved_when_the_traversal_rules_are_off() {
    for admin_first in [false, true] {
        let yaml = format!("{}{TRAVERSAL_RULES_OFF}", config(admin_first));
        run_cases(&yaml, DOT_SEGMENT_CASES, admin_first).await;
    }
}

async fn run_table(admin_first: bool) {
    run_cases(&config(admin_first), CASES, admin_first).await;
}

async fn run_cases(yaml: &str, cases: &[Case], admin_first: bool) {
    let gw = TestGateway::start(yaml).await;
    let mut failures = Vec::new();
    for (method, host, path, headers, want) in cases {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in *headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Content-Length: 0\r\n\r\n");
        let resp = raw(gw.addr, req.as_bytes(), std::time::Duration::from_secs(5)).await;
        let status = raw_status(&resp);
        let got = if status == 200 {
            resp.lines()
                .find_map(|l| l.strip_prefix("x-route: "))
                .unwrap_or("?")
                .trim()
                .to_string()
        } else {
            // Refusals from the gateway carry the JSON error body.
            let j = raw_json(&resp);
            assert!(
                j["error"].is_string() && j["request_id"].is_string(),
                "{resp}"
            );
            status.to_string()
        };
        if got != *want {
            failures.push(format!(
                "{method} {host} {path} {headers:?}: want {want}, got {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "admin_first={admin_first}:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn precedence_table_with_broad_prefix_first() {
    assert!(CASES.len() >= 40);
    run_table(false).await;
}

#[tokio::test]
async fn precedence_table_with_specific_prefix_first() {
    run_table(true).await;
}

#[tokio::test]
async fn raw_backslash_in_path_is_refused() {
    let gw = TestGateway::start(&config(false)).await;
    let resp = raw(
        gw.addr,
        b"GET /v1\\admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
}

#[tokio::test]
async fn upstream_receives_the_normalized_path() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\n{TRAVERSAL_RULES_OFF}upstreams:\n  - name: up\n    targets: [{{ address: \"{}\" }}]\nroutes:\n  - name: admin\n    match: {{ path: {{ prefix: /v1/admin }} }}\n    upstream: up\n",
        up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let resp = raw(
        gw.addr,
        b"GET //v1/x/../%61dmin//users?q=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().uri, "/v1/admin/users?q=%2F");
}
