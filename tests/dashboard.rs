//! The dashboard in a real browser: Debian's Chromium, driven by playwright-core
//! (tests/browser/dashboard.mjs), against an in-process gateway. Screenshots are written under
//! the test's output directory (`target/tmp/dashboard/`). A missing browser, Node.js or
//! playwright-core fails the test: `scripts/test` installs them. The browser tests run one at a
//! time (`support::ALONE`): three Chromiums beside each other on two cores starved the gateways'
//! 90 ms health checks (a healthy target marked down, traffic answered 503) and the store's
//! writers (SQLite "database is locked").

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "dashboard-test-token-0123456789";

fn config(up: &Upstream, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!(", token: \"{t}\""));
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         admin: {{ address: \"127.0.0.1:0\"{token} }}\n\
         defaults: {{ auth: none }}\n\
         upstreams:\n  - name: backend\n    targets: [{{ address: \"{}\" }}]\n    connect_timeout_ms: 200\n    \
         health_check: {{ path: /health, interval_ms: 100, timeout_ms: 90, unhealthy_threshold: 1 }}\n    \
         circuit_breaker: {{ consecutive_failures: 2, open_ms: 60000 }}\n\
         routes:\n  - name: api\n    match: {{ path: {{ prefix: /api }} }}\n    upstream: backend\n  \
         - name: health\n    match: {{ path: {{ exact: /healthz }} }}\n    direct_response: {{ status: 200, body: ok }}\n",
        up.addr
    )
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn shot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// Fails loudly, naming what is missing, instead of skipping.
fn require_browser_tools() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: scripts/test installs Debian's chromium package"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules/playwright-core is missing: scripts/test runs `npm ci` there"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: scripts/test needs Node.js"
    );
}

struct Driver {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Driver {
    fn start(envs: &[(&str, String)]) -> Driver {
        require_browser_tools();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(browser_dir().join("dashboard.mjs"))
            .env("SHOT_DIR", shot_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Driver {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line the script prints (`None` once it has exited).
    async fn next(&mut self) -> Option<String> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the browser script went silent for 60 s")
            .unwrap();
        if let Some(l) = &line {
            eprintln!("browser: {l}");
            self.seen.push(l.clone());
        }
        line
    }

    async fn reply(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn finish(mut self) -> Vec<String> {
        while self.next().await.is_some() {}
        let status = self.child.wait().await.unwrap();
        assert!(
            status.success(),
            "the browser checks failed ({status}); its output: {:?}",
            self.seen
        );
        assert_eq!(self.seen.last().map(String::as_str), Some("DONE"));
        self.seen
    }
}

async fn config_document(gw: &TestGateway, token: Option<&str>) -> serde_json::Value {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    get(
        &client(),
        &format!("http://{}/admin/config-version", gw.admin),
        &headers,
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_config_routes_traffic_and_a_failing_upstream_live() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("backend").await;
    let gw = TestGateway::start(&config(&up, None)).await;
    // A reload makes the version 2, so the page must show the live value, not a constant.
    gw.write_config(&config(&up, None).replace("body: ok", "body: fine"));
    gw.gateway.reload().await.unwrap();
    let doc = config_document(&gw, None).await;
    assert_eq!(doc["config_version"], 2, "{doc}");
    assert_eq!(doc["last_reload"]["result"], "reloaded", "{doc}");
    // Then a refused reload: version 2 keeps serving, and the page must say why.
    gw.write_config(&config(&up, None).replace("upstream: backend", "upstream: nowhere"));
    assert!(gw.gateway.reload().await.is_err());
    let doc = config_document(&gw, None).await;
    assert_eq!(doc["config_version"], 2, "{doc}");
    assert_eq!(doc["last_reload"]["result"], "failed", "{doc}");
    let error = doc["last_reload"]["errors"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("portcullis.yaml:") && error.contains("nowhere"),
        "{error}"
    );

    let mut driver = Driver::start(&[
        ("MODE", "open".into()),
        ("ADMIN_URL", format!("http://{}", gw.admin)),
        ("GATEWAY_URL", format!("http://{}", gw.addr)),
        ("EXPECT_VERSION", "2".into()),
        ("EXPECT_RELOAD_ERROR", error),
        ("EXPECT_ROUTES", "api,health".into()),
        ("TRAFFIC_ROUTE", "api".into()),
        ("TARGET", up.addr.to_string()),
    ]);
    loop {
        match driver.next().await.as_deref() {
            Some("STOP_UPSTREAM") => {
                up.stop();
                driver.reply("done").await;
            }
            Some(_) => {}
            None => break,
        }
    }
    let seen = driver.finish().await;
    assert!(
        seen.iter().any(|l| l.starts_with("SEEN_DOWN_MS")),
        "{seen:?}"
    );
    // The page's numbers are the admin API's: the series recorded the traffic too.
    let series = get(&client(), &format!("http://{}/admin/series", gw.admin), &[])
        .await
        .json();
    let peak = series["routes"]["api"]["requests_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .fold(0.0, f64::max);
    assert!(peak > 10.0, "{series}");
    assert!(shot_dir().join("dashboard.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_shows_only_the_prompt_until_the_token_is_given() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("backend").await;
    let gw = TestGateway::start(&config(&up, Some(TOKEN))).await;
    let doc = config_document(&gw, Some(TOKEN)).await;
    // The static files are public; the data is not.
    let page = get(&client(), &format!("http://{}/dashboard", gw.admin), &[]).await;
    assert_eq!(page.status, 200);
    let series = get(&client(), &format!("http://{}/admin/series", gw.admin), &[]).await;
    series.assert_gateway_error(401);

    let driver = Driver::start(&[
        ("MODE", "token".into()),
        ("ADMIN_URL", format!("http://{}", gw.admin)),
        ("TOKEN", TOKEN.into()),
        ("EXPECT_VERSION", doc["config_version"].to_string()),
        ("EXPECT_CHECKSUM", doc["checksum"].as_str().unwrap().into()),
    ]);
    driver.finish().await;
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_can_be_turned_off() {
    let up = Upstream::start("backend").await;
    let gw = TestGateway::start(&config(&up, None)).await;
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = get(&client(), &format!("http://{}{path}", gw.admin), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert!(h("content-type").starts_with(kind), "{path}");
        assert!(h("content-security-policy").contains("default-src 'none'"));
        assert!(!h("content-security-policy").contains("unsafe"));
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("x-frame-options"), "DENY");
    }
    // Read-only: nothing but GET.
    let post = post_empty(&client(), &format!("http://{}/dashboard", gw.admin)).await;
    assert_eq!(post.status, 405);

    let off = TestGateway::start(&config(&up, None).replace(
        "admin: { address: \"127.0.0.1:0\" }",
        "admin: { address: \"127.0.0.1:0\", dashboard: false }",
    ))
    .await;
    let r = get(&client(), &format!("http://{}/dashboard", off.admin), &[]).await;
    r.assert_gateway_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_store_mode_the_page_shows_the_store_version_and_follows_an_activation() {
    let _alone = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let v1 = push(&store, dir.path(), "v1.yaml", &store_document("v1", None));
    assert_eq!(cli(&store, &["activate", &v1.to_string()]).0, 0);
    let gw =
        GatewayProcess::follow(&store, "gw-1", "zone=a", tempfile::tempdir().unwrap(), None).await;
    let v2 = push(&store, dir.path(), "v2.yaml", &store_document("v2", None));

    let mut driver = Driver::start(&[
        ("MODE", "store".into()),
        ("ADMIN_URL", format!("http://{}", gw.admin)),
        ("EXPECT_STORE_VERSION", v1.to_string()),
        ("EXPECT_NEXT_STORE_VERSION", v2.to_string()),
    ]);
    loop {
        match driver.next().await.as_deref() {
            Some("ACTIVATE_NEXT") => {
                let (code, out) = cli(&store, &["activate", &v2.to_string()]);
                assert_eq!(code, 0, "{out}");
                driver.reply("done").await;
            }
            Some(_) => {}
            None => break,
        }
    }
    driver.finish().await;
}
