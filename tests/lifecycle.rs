//! Reload and shutdown: atomic swaps under load, refused reloads that keep the old config,
//! SIGHUP, SIGTERM with draining, and the admin API.
//! Its tests run one at a time (each takes `ALONE` first): the drain tests time the exit.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn marked_config(up: &Upstream, marker: &str, valid: bool) -> String {
    let upstream_ref = if valid { "up" } else { "missing-upstream" };
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: {upstream_ref}\n    headers:\n      response:\n        set: {{ x-config-marker: \"{marker}\" }}\n",
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_every_200ms_under_load_loses_no_request_and_never_mixes_versions() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&marked_config(&up, "0", true)).await;
    let applied = Arc::new(AtomicU64::new(0)); // marker known to be in force
    let attempted = Arc::new(AtomicU64::new(0)); // newest marker a reload may have installed
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(20);

    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, applied, attempted, stop) = (
            gw.url("/work"),
            applied.clone(),
            attempted.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut last) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let lo = applied.load(Ordering::SeqCst);
                let r = get(&c, &url, &[]).await;
                let hi = attempted.load(Ordering::SeqCst);
                assert_eq!(r.status, 200, "request failed during reloads: {}", r.text());
                let marker: u64 = r.headers["x-config-marker"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .expect("marker from a valid config");
                assert!(
                    marker >= lo && marker <= hi,
                    "response from config {marker}, in force: {lo}..={hi}"
                );
                assert!(marker >= last, "went back from config {last} to {marker}");
                last = marker;
                ok += 1;
            }
            ok
        }));
    }

    let admin = client();
    let reload_url = format!("http://{}/admin/reload", gw.admin);
    let started = Instant::now();
    let (mut good, mut bad, mut n) = (0, 0, 0u64);
    while started.elapsed() < run_for {
        n += 1;
        let valid = n % 2 == 0;
        if valid {
            attempted.store(n, Ordering::SeqCst);
        }
        gw.write_config(&marked_config(
            &up,
            &if valid {
                n.to_string()
            } else {
                format!("invalid-{n}")
            },
            valid,
        ));
        let r = post_empty(&admin, &reload_url).await;
        if valid {
            assert_eq!(r.status, 200, "{}", r.text());
            applied.store(n, Ordering::SeqCst);
            good += 1;
        } else {
            assert_eq!(r.status, 422, "{}", r.text());
            let errors = r.json()["errors"].to_string();
            assert!(errors.contains("unknown upstream"), "{errors}");
            bad += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task panicked");
    }
    eprintln!("{total} requests, {good} valid and {bad} invalid reloads");
    // About 45 of each at 200 ms apart; the bound leaves room for a slow CI machine.
    assert!(
        good >= 25 && bad >= 25,
        "{good} valid, {bad} invalid reloads"
    );
    assert!(total > 1000, "only {total} requests in 20 s");
    assert_eq!(gw.gateway.snapshot().version, 1 + good as u64);
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_config_and_reports_every_error() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&marked_config(&up, "1", true)).await;
    let before = gw.gateway.snapshot();
    gw.write_config("listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nadmin: { address: \"127.0.0.1:0\" }\nroutes:\n  - name: Bad_Name\n    match: { path: { prefix: nope } }\n    upstream: ghost\n");
    let errors = gw
        .gateway
        .reload()
        .await
        .expect_err("invalid config must be refused");
    let text = errors.to_string();
    for want in [
        "kebab-case",
        "must start with `/`",
        "unknown upstream `ghost`",
        "no `auth`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let after = gw.gateway.snapshot();
    assert_eq!(after.version, before.version);
    assert_eq!(after.checksum, before.checksum);
    let r = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-config-marker"], "1");
    // Reloading an identical file changes nothing.
    gw.write_config(&marked_config(&up, "1", true));
    let applied = gw.gateway.reload().await.unwrap();
    assert!(!applied.changed);
    assert_eq!(applied.version, before.version);
}

#[tokio::test]
async fn admin_api_reports_version_routes_and_health() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\", token: \"0123456789abcdef-admin\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    headers:\n      request:\n        set: {{ authorization: \"Bearer upstream-secret\", x-plain: visible }}\n",
        up.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let admin = |p: &str| format!("http://{}{p}", gw.admin);
    let auth = ("authorization", "Bearer 0123456789abcdef-admin");

    assert_eq!(get(&c, &admin("/health/live"), &[]).await.status, 200);
    assert_eq!(get(&c, &admin("/health/ready"), &[]).await.status, 200);
    get(&c, &admin("/admin/config-version"), &[])
        .await
        .assert_gateway_error(401);
    get(
        &c,
        &admin("/admin/config-version"),
        &[("authorization", "Bearer wrong")],
    )
    .await
    .assert_gateway_error(401);

    let v = get(&c, &admin("/admin/config-version"), &[auth])
        .await
        .json();
    assert_eq!(v["config_version"], 1);
    assert!(v["checksum"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        v["checksum"].as_str().unwrap(),
        gw.gateway.snapshot().checksum
    );
    assert!(
        humantime::parse_rfc3339(v["loaded_at"].as_str().unwrap()).is_ok(),
        "{v}"
    );

    let routes = get(&c, &admin("/admin/routes"), &[auth]).await;
    assert_eq!(routes.status, 200);
    let text = routes.text();
    assert!(text.contains("\"name\":\"all\""), "{text}");
    assert!(text.contains("visible"), "{text}");
    assert!(!text.contains("upstream-secret"), "secret shown: {text}");
    assert!(
        !text.contains("0123456789abcdef-admin"),
        "admin token shown: {text}"
    );

    let reload = send(
        &c,
        http::Request::post(admin("/admin/reload"))
            .header(auth.0, auth.1)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, 200);
    assert_eq!(reload.json()["status"], "unchanged");
    get(&c, &admin("/nope"), &[auth])
        .await
        .assert_gateway_error(404);
    // Every admin path answers the wrong method with 405 and says which one it takes.
    for (method, path, allowed) in [
        ("POST", "/metrics", "GET"),
        ("DELETE", "/admin/routes", "GET"),
        ("PUT", "/admin/upstreams", "GET"),
        ("GET", "/admin/reload", "POST"),
        ("POST", "/health/live", "GET"),
    ] {
        let r = send(
            &c,
            http::Request::builder()
                .method(method)
                .uri(admin(path))
                .header(auth.0, auth.1)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        r.assert_gateway_error(405);
        assert_eq!(r.headers["allow"], allowed, "{method} {path}");
    }
}

#[test]
fn checksum_ignores_layout_and_comments() {
    let a = "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nadmin: { address: \"127.0.0.1:0\" }\ndefaults: { auth: none }\nroutes:\n  - name: r\n    match: { path: { exact: /x } }\n    direct_response: { status: 200 }\n";
    let b = "# same config, other layout\nadmin:\n  address: 127.0.0.1:0\nlisteners:\n  - address: 127.0.0.1:0\n    name: public\ndefaults:\n  auth: none\nroutes:\n  - match:\n      path:\n        exact: /x\n    name: r\n    direct_response:\n      status: 200\n";
    let ca = portcullis::compile::text(a, "a.yaml").unwrap().checksum;
    let cb = portcullis::compile::text(b, "b.yaml").unwrap().checksum;
    assert_eq!(ca, cb);
    // Pinned: gateways of different builds compare checksums, so the canonical form must not
    // drift by accident. A deliberate change to it updates this value and says so.
    assert_eq!(
        ca,
        "sha256:60bdfafe3ed5a453e2074c77535bd55a6c30a75589434bb04b613eb3f5fb2c4e"
    );
    let c = portcullis::compile::text(&a.replace("/x", "/y"), "c.yaml")
        .unwrap()
        .checksum;
    assert_ne!(ca, c);
}

fn process_config(up: &Upstream, marker: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"{{LISTEN}}\" }}]\nadmin: {{ address: \"{{ADMIN}}\" }}\ndefaults: {{ auth: none, drain_timeout_ms: 5000 }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    headers: {{ response: {{ set: {{ x-config-marker: \"{marker}\" }} }} }}\n",
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_in_flight_requests_then_exits_0() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let mut gw = GatewayProcess::spawn(&process_config(&up, "a"), 1).await;
    let c = client();
    assert_eq!(gw.config_version().await, 1);

    // SIGHUP with a valid change.
    gw.write_config(&process_config(&up, "b"));
    gw.signal(libc::SIGHUP);
    let mut version = 1;
    for _ in 0..100 {
        version = gw.config_version().await;
        if version == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version, 2);
    assert_eq!(
        get(&c, &format!("http://{}/x", gw.addr), &[]).await.headers["x-config-marker"],
        "b"
    );

    // SIGHUP with a broken file: refused, old config serves.
    gw.write_config("listeners: [oops");
    gw.signal(libc::SIGHUP);
    // Wait for the refusal itself (a gateway that ignored the signal would never report one).
    let mut doc = gw.config_document().await;
    for _ in 0..100 {
        if doc["last_reload"]["result"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        doc = gw.config_document().await;
    }
    assert_eq!(doc["last_reload"]["result"], "failed", "{doc}");
    let error = doc["last_reload"]["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("portcullis.yaml:1"), "{doc}");
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert_eq!(gw.config_version().await, 2);
    assert_eq!(
        get(&c, &format!("http://{}/x", gw.addr), &[]).await.headers["x-config-marker"],
        "b"
    );

    // SIGTERM while a request is in flight: it completes, then the process exits 0.
    let url = format!("http://{}/sleep/700", gw.addr);
    // Counted before the spawn: the request can reach the upstream before this task runs again.
    let before = up.count();
    let in_flight = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, &url, &[]).await })
    };
    wait_until(
        "the request is at the upstream",
        Duration::from_secs(5),
        || up.count() > before,
    )
    .await;
    gw.signal(libc::SIGTERM);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut off");
    assert_eq!(r.text(), "slept");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// SIGTERM stops the listener at once (a new connection is refused while the process still
/// drains), and a request that outlives `drain_timeout_ms` is cut off when it runs out: the
/// process exits 0 after the drain timeout, not when the request would have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_cuts_off_what_outlives_the_drain_timeout() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let yaml = process_config(&up, "a").replace("drain_timeout_ms: 5000", "drain_timeout_ms: 1000");
    let mut gw = GatewayProcess::spawn(&yaml, 1).await;
    let c = client();
    let url = format!("http://{}/sleep/6000", gw.addr);
    let in_flight = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = c
                .request(
                    http::Request::get(url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await;
            match r {
                Ok(resp) => {
                    use http_body_util::BodyExt;
                    let status = resp.status().as_u16();
                    // A head that was sent before the cut still loses its body.
                    match resp.into_body().collect().await {
                        Ok(b) => format!("{status} {}", String::from_utf8_lossy(&b.to_bytes())),
                        Err(e) => format!("{status} body cut: {e}"),
                    }
                }
                Err(e) => format!("cut: {e}"),
            }
        })
    };
    // The request is at the upstream before the signal.
    wait_until(
        "the request is at the upstream",
        Duration::from_secs(5),
        || up.count() == 1,
    )
    .await;
    let addr = gw.addr;
    gw.signal(libc::SIGTERM);
    let term = Instant::now();

    // New connections are refused while the old one drains.
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("unexpected connect error {e}"),
            Ok(_) => {
                assert!(
                    term.elapsed() < Duration::from_millis(500),
                    "still accepting {:?} after SIGTERM",
                    term.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        term.elapsed() < Duration::from_millis(900),
        "the listener closed only after {:?}",
        term.elapsed()
    );
    let (code, exited_after) = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit(Duration::from_secs(10));
        (code, term.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "exit code after the drain timeout");
    // After the drain timeout, within the README's 1.25x (and scheduling slack).
    assert_closed_on_time(exited_after, Duration::from_millis(1000));
    let outcome = in_flight.await.unwrap();
    assert!(
        !outcome.ends_with("slept"),
        "the request outlived the drain timeout yet completed: {outcome}"
    );
}

/// A client on one keep-alive connection (reopened when the server closes it), sending GET
/// /echo until `stop` (at most 10 s): (answers 200, every failure).
async fn keep_alive_client(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>) {
    let c = client();
    let url = format!("http://{addr}/echo");
    let (mut ok, mut failed) = (0u64, Vec::new());
    let until = Instant::now() + Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let req = http::Request::get(&url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        match c.request(req).await {
            Ok(r) if r.status() == 200 => {
                use http_body_util::BodyExt;
                let _ = r.into_body().collect().await;
                ok += 1;
            }
            Ok(r) => failed.push(format!("status {}", r.status())),
            Err(e) => failed.push(format!("{e:?}")),
        }
    }
    (ok, failed)
}

/// `drain_delay_ms`: on SIGTERM readiness turns 503 while the gateway still serves (HTTP/1.1
/// answers say `Connection: close`), and only then does the listener close. Four clients that
/// stop when the load balancer's probe sees 503 (as a balancer would take the instance out) lose
/// no request, and the probe sees 503 before any connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_503_before_any_connection_is_refused() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let yaml = process_config(&up, "a").replace(
        "drain_timeout_ms: 5000",
        "drain_timeout_ms: 5000, drain_delay_ms: 1500",
    );
    let mut gw = GatewayProcess::spawn(&yaml, 1).await;
    let (addr, admin) = (gw.addr, gw.admin);
    let out_of_rotation = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    // The balancer's probe.
    let probe = {
        let (out, stop) = (Arc::clone(&out_of_rotation), Arc::clone(&stop));
        tokio::spawn(async move {
            let c = client();
            let url = format!("http://{admin}/health/ready");
            while !stop.load(Ordering::Relaxed) {
                let r = get(&c, &url, &[]).await;
                if r.status == 503 {
                    assert_eq!(r.json()["status"], "draining");
                    out.store(true, Ordering::Relaxed);
                    return Some(start.elapsed());
                }
                assert_eq!(r.status, 200);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        })
    };
    // Four clients, each with keep-alive, until the balancer takes the instance out.
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_alive_client(addr, Arc::clone(&out_of_rotation))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term_at = start.elapsed();
    gw.signal(libc::SIGTERM);
    // Within the delay: still served, and told to close the connection.
    wait_until("readiness is 503", Duration::from_secs(2), || {
        out_of_rotation.load(Ordering::Relaxed)
    })
    .await;
    let resp = raw(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: api.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{resp}"
    );

    // When does the listener refuse connections?
    let refused_at = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break start.elapsed(),
            Err(e) => panic!("unexpected connect error {e}"),
            Ok(_) => {
                assert!(start.elapsed() < Duration::from_secs(8), "still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let unready_at = probe.await.unwrap().expect("the probe never saw 503");
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 20, "the clients sent only {total} requests");
    assert!(
        unready_at < refused_at,
        "readiness went 503 at {unready_at:?}, connections refused from {refused_at:?}"
    );
    // Refused only after the delay (scheduling slack aside), not at once.
    assert!(
        refused_at >= term_at + Duration::from_millis(1400),
        "SIGTERM at {term_at:?}, refused from {refused_at:?}"
    );
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A binary upgrade under load: a second process started with the same `--upgrade-socket`
/// takes the listening sockets over (no new bind, no moment without a listener), the old one
/// stops accepting, drains and exits 0, and the clients — new connections per request and
/// keep-alive ones — see no connection error and no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_loses_no_connection_and_no_request() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("upgrade.sock");
    let socket_arg = socket.to_str().unwrap().to_string();
    let mut old = GatewayProcess::spawn_with_args(
        &process_config(&up, "old"),
        1,
        &["--upgrade-socket", &socket_arg],
    )
    .await;
    let addr = old.addr;
    // The same addresses, another marker: which process answered.
    let new_config = old.dir.path().join("new.yaml");
    std::fs::write(
        &new_config,
        std::fs::read_to_string(&old.config_path)
            .unwrap()
            .replace("\"old\"", "\"new\""),
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let fresh_connections: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut ok, mut failed, mut markers) = (0u64, Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let resp = raw(
                        addr,
                        b"GET /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
                        Duration::from_secs(5),
                    )
                    .await;
                    if raw_status(&resp) == 200 {
                        ok += 1;
                        let m = if resp.contains("x-config-marker: new") {
                            "new"
                        } else {
                            "old"
                        };
                        if markers.last() != Some(&m) {
                            markers.push(m);
                        }
                    } else {
                        failed.push(resp.chars().take(120).collect::<String>());
                    }
                }
                (ok, failed, markers)
            })
        })
        .collect();
    let keep_alive: Vec<_> = (0..2)
        .map(|_| tokio::spawn(keep_alive_client(addr, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The upgrade: the same binary, handing over to itself.
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "-c"])
        .arg(&new_config)
        .args(["--worker-threads", "1", "--upgrade-socket", &socket_arg])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let old_code = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(old_code, Some(0), "the old process's exit");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut saw_new_after_old = false;
    for f in fresh_connections {
        let (ok, failed, markers) = f.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 10, "only {ok} requests");
        assert_eq!(markers.first(), Some(&"old"), "{markers:?}");
        saw_new_after_old |= markers.last() == Some(&"new");
        // Once the new process answered, the old one never did again.
        assert!(markers.len() <= 2, "{markers:?}");
    }
    assert!(saw_new_after_old, "the new process never answered");
    for k in keep_alive {
        let (ok, failed) = k.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 10, "only {ok} requests");
    }
    // The new process serves on, and takes further upgrades.
    let r = get(&client(), &format!("http://{addr}/echo"), &[]).await;
    assert_eq!(r.headers["x-config-marker"], "new");
    assert!(
        socket.exists(),
        "the new process listens for the next upgrade"
    );
    let _ = new.kill();
    let _ = new.wait();
}
