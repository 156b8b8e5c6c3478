//! The command line: `validate` reports every error with its line, `explain` shows the router's
//! decision, `--version` prints the version.

use std::process::Command;

/// A config file in `dir` with one listener, the admin address, public routes and `rest`.
fn routes_file(dir: &tempfile::TempDir, rest: &str) -> std::path::PathBuf {
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners: [{{ name: public, address: 127.0.0.1:8080 }}]\nadmin: {{ address: 127.0.0.1:9901 }}\ndefaults: {{ auth: none }}\n{rest}"
        ),
    )
    .unwrap();
    file
}

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BROKEN: &str = r#"listeners:
  - name: public
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:8080
upstreams:
  - name: Orders_V1
    targets:
      - address: 127.0.0.1:9001
routes:
  - name: orders
    match:
      path: { prefix: v1/orders }
    upstream: orders-v9
    timeout_ms: 120000
    auth: none
  - name: split
    match:
      path: { regex: "^/v1/(" }
    split:
      - { upstream: Orders_V1, weight: 9000 }
    auth: none
  - name: public
    match:
      path: { prefix: /v1/public }
    upstream: Orders_V1
  - name: public-twin
    match:
      path: { prefix: /v1/public }
    upstream: Orders_V1
    auth: none
  - name: public
    match:
      path: { exact: /x }
    direct_response: { status: 200 }
    auth: none
  - name: retried
    match:
      path: { exact: /r }
    upstream: Orders_V1
    auth: none
    retries:
      attempts: 5
"#;

#[test]
fn validate_prints_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let (code, out, _) = portcullis(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = file.display().to_string();
    let expected = [
        (5, "admin.address", "must not share an address"),
        (7, "upstreams[0].name", "kebab-case"),
        (13, "routes[0].match.path.prefix", "must start with `/`"),
        (14, "routes[0].upstream", "unknown upstream `orders-v9`"),
        (15, "routes[0].timeout_ms", "above the 60000 ms maximum"),
        (19, "routes[1].match.path.regex", "invalid regex"),
        (20, "routes[1].split", "must add up to 10000"),
        (23, "routes[2].auth", "no `auth`"),
        (27, "routes[3]", "shadowed by route `public`"),
        (32, "routes[4].name", "duplicate route name `public`"),
        (43, "routes[5].retries.attempts", "retry storm"),
    ];
    for (line, key, text) in expected {
        let prefix = format!("{f}:{line}: {key}: ");
        assert!(
            out.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(text)),
            "no `{prefix}…{text}…` in:\n{out}"
        );
    }
}

#[test]
fn validate_reports_parse_errors_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n    adress_typo: 1\nadmin:\n  address: 127.0.0.1:9901\n").unwrap();
    let (code, out, _) = portcullis(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("{}:4:", file.display())) && out.contains("adress_typo"),
        "{out}"
    );

    std::fs::write(
        &file,
        "listeners: []\nadmin:\n  address: ${PORTCULLIS_TEST_UNSET_VARIABLE}\n",
    )
    .unwrap();
    let (code, out, _) = portcullis(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(":3:") && out.contains("PORTCULLIS_TEST_UNSET_VARIABLE"),
        "{out}"
    );
}

#[test]
fn env_variables_are_expanded_in_quoted_and_plain_strings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - name: public\n    address: \"${PORTCULLIS_TEST_HOST}:8080\"\nadmin:\n  address: ${PORTCULLIS_TEST_HOST}:9901\n  # token: ${NOT_SET_BUT_COMMENTED}\ndefaults: { auth: none }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", file.to_str().unwrap()])
        .env("PORTCULLIS_TEST_HOST", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn explain_shows_the_winner_and_why_others_lost() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_file(
        &dir,
        r#"routes:
  - name: v1-all
    match: { path: { prefix: /v1 } }
    direct_response: { status: 200 }
  - name: v1-admin
    match: { path: { prefix: /v1/admin }, methods: [GET] }
    direct_response: { status: 200 }
  - name: other-host
    match: { hosts: [other.example.com], path: { prefix: / } }
    direct_response: { status: 200 }
"#,
    );
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&[
        "explain",
        "-c",
        f,
        "GET",
        "http://api.example.com/v1//admin/./users",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("path=/v1/admin/users"), "{out}");
    assert!(out.contains("matched: v1-admin"), "{out}");
    assert!(
        out.contains("v1-all: lost: `v1-admin` has a longer prefix"),
        "{out}"
    );
    assert!(
        out.contains("other-host: host api.example.com does not match"),
        "{out}"
    );

    let (code, out, _) = portcullis(&[
        "explain",
        "-c",
        f,
        "POST",
        "/v1/admin",
        "-H",
        "Host: api.example.com",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("matched: v1-all"), "{out}");
    assert!(
        out.contains("v1-admin: method POST not in its method list"),
        "{out}"
    );

    // Traversal is refused by the built-in rule before routing, and explain says which.
    let (code, out, _) = portcullis(&[
        "explain",
        "-c",
        f,
        "GET",
        "http://api.example.com/v1/x/../admin/users",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("built-in rules: refused by `path-traversal` (400)"),
        "{out}"
    );
    assert!(out.contains("refused: 400 before routing"), "{out}");
    assert!(!out.contains("matched:"), "{out}");

    let (code, out, _) = portcullis(&["explain", "-c", f, "GET", "/v1/a%2Fb"]);
    assert_eq!(code, 2);
    assert!(out.contains("refused: 400"), "{out}");
}

#[test]
fn explain_shows_query_predicates_which_one_failed_and_a_redirects_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_file(
        &dir,
        r#"routes:
  - name: search
    match: { path: { exact: /search } }
    direct_response: { status: 200 }
  - name: search-v2
    match: { path: { exact: /search }, query: [{ name: v, value: "2" }, { name: q, present: true }] }
    direct_response: { status: 200 }
  - name: moved
    match: { path: { prefix: /old } }
    redirect: { scheme: https, replace_prefix: /new, status: 308 }
  - name: templated
    match: { path: { prefix: /tpl } }
    direct_response: { status: 200 }
    headers: { response: { set: { x-served: "${route} $${x}" } } }
"#,
    );
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&["explain", "-c", f, "GET", "/search?v=2&q=cats"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("matched: search-v2"), "{out}");
    assert!(out.contains("query [?v = \"2\", ?q present]"), "{out}");
    assert!(
        out.contains("search: lost: `search-v2` has more query predicates"),
        "{out}"
    );
    let (_, out, _) = portcullis(&["explain", "-c", f, "GET", "http://api.test:8080/old/x?a=1"]);
    assert!(
        out.contains("redirect: 308 Permanent Redirect, Location: https://api.test/new/x?a=1"),
        "{out}"
    );
    let (_, out, _) = portcullis(&["explain", "-c", f, "GET", "/tpl"]);
    assert!(
        out.contains("response header template: set x-served: ${route} $${x}"),
        "{out}"
    );
    let (_, out, _) = portcullis(&["explain", "-c", f, "GET", "/search?v=2"]);
    assert!(
        out.contains("matched: search\n") || out.contains("matched: search ("),
        "{out}"
    );
    assert!(
        out.contains("search-v2: query predicate failed: ?q present"),
        "{out}"
    );
}

#[test]
fn explain_shows_the_tenant_host_tier_and_its_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_file(
        &dir,
        r#"routes:
  - name: any-sub
    match: { hosts: ["*.api.test"], path: { prefix: / } }
    direct_response: { status: 200 }
  - name: per-tenant
    match: { hosts: ["{tenant}.api.test"], path: { prefix: / } }
    direct_response: { status: 200 }
"#,
    );
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&["explain", "-c", f, "GET", "http://acme.api.test/x"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("matched: per-tenant (tenant host {tenant}.api.test"),
        "{out}"
    );
    // Two labels: only the `*.` wildcard takes it.
    let (code, out, _) = portcullis(&["explain", "-c", f, "GET", "http://a.b.api.test/x"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("matched: any-sub"), "{out}");
}

#[test]
fn version_is_printed() {
    let (code, out, _) = portcullis(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("portcullis ") && out.contains(env!("CARGO_PKG_VERSION")),
        "{out}"
    );
}

#[test]
fn the_bundled_quickstart_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");
    let (code, out, err) = portcullis(&["validate", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok ("), "{out}");
    assert!(!out.contains("warning"), "{out}");
    let (code, out, err) = portcullis(&["validate", "--strict", path]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn validate_strict_refuses_what_plain_validate_only_warns_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: public, address: 127.0.0.1:8080 }]\nadmin: { address: 127.0.0.1:9901 }\ndefaults: { auth: none, drain_timeout_ms: 5000 }\nupstreams: [{ name: app, targets: [{ address: \"127.0.0.1:9001\" }] }]\nrate_limits: [{ name: rl, algorithm: token_bucket, capacity: 5, refill_per_second: 5 }]\nroutes:\n  - name: open\n    match: { path: { prefix: /open } }\n    upstream: app\n  - name: slow\n    match: { path: { prefix: /slow } }\n    upstream: app\n    timeout_ms: 20000\n    rate_limits: [rl]\n  - name: fine\n    match: { path: { prefix: /fine } }\n    upstream: app\n    rate_limits: [rl]\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = portcullis(&["validate", p]);
    assert_eq!(code, 0, "{out}{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{out}");
    assert!(
        warnings[0].contains(
            ": defaults.timeout_ms: 15000 ms is longer than defaults.drain_timeout_ms (5000 ms)"
        ),
        "{out}"
    );
    assert!(
        warnings[1].contains(
            ": routes[0].rate_limits: a public route to an upstream without any rate limit"
        ),
        "{out}"
    );
    assert!(warnings[2].contains(":13: routes[1].timeout_ms: 20000 ms is longer than defaults.drain_timeout_ms (5000 ms)"), "{out}");
    assert!(out.contains(": ok ("), "{out}");
    let (code, out, err) = portcullis(&["validate", "--strict", p]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        err.contains("3 warning(s)") && err.contains("--strict"),
        "{err}"
    );
}

#[test]
fn explain_says_whether_the_route_caches_and_what_its_key_is_made_of() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_file(
        &dir,
        r#"upstreams: [{ name: app, targets: [{ address: "127.0.0.1:9001" }] }]
routes:
  - name: cached
    match: { path: { prefix: /a } }
    upstream: app
    cache: { ttl_s: 60, vary: [accept-language], stale_while_revalidate_s: 30, query_allow: [page] }
  - name: plain
    match: { path: { prefix: / } }
    upstream: app
"#,
    );
    let f = file.to_str().unwrap();
    let (code, out, _) = portcullis(&[
        "explain",
        "-c",
        f,
        "GET",
        "http://API.example/a/x?z=1&page=2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cache: key http://api.example/a/x?page=2 (query limited to [page]) + the response's Vary + [accept-language]; ttl_s 60 when the upstream gives none; stale-while-revalidate 30 s"),
        "{out}"
    );
    let (_, out, _) = portcullis(&["explain", "-c", f, "POST", "http://api.example/a/x"]);
    assert!(out.contains("cache: bypassed (method POST"), "{out}");
    let (_, out, _) = portcullis(&["explain", "-c", f, "GET", "http://api.example/other"]);
    assert!(out.contains("cache: off"), "{out}");
}
