//! The control plane end to end: the `portcullis config` CLI on a real SQLite file and a real
//! PostgreSQL server (started here from Debian's package), gateway processes following the
//! store (LISTEN/NOTIFY, polling), the store going away and coming back, last-known-good
//! starts, canary rollouts rolled back and promoted, and rollback under load.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

async fn body_of(gw: &GatewayProcess) -> Option<String> {
    body_of_addr(&client(), gw.addr).await
}

/// The body of a 200 answer to `GET /`, "status N" for another status, `None` when the request
/// failed.
async fn body_of_addr(c: &HttpClient, addr: SocketAddr) -> Option<String> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.request(
            http::Request::get(format!("http://{addr}/"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    if r.status() != 200 {
        return Some(format!("status {}", r.status()));
    }
    use http_body_util::BodyExt;
    Some(String::from_utf8_lossy(&r.into_body().collect().await.ok()?.to_bytes()).into_owned())
}

/// Waits until every gateway answers `want`; returns how long it took.
async fn until_all_serve(gws: &[&GatewayProcess], want: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for g in gws {
            if body_of(g).await.as_deref() != Some(want) {
                all = false;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not every gateway serves {want} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients sending requests to every gateway until stopped: (requests, failures).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: &[SocketAddr], accept: &'static [&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = addrs
            .iter()
            .map(|addr| {
                let (stop, sent, failed, addr) =
                    (stop.clone(), sent.clone(), failed.clone(), *addr);
                tokio::spawn(async move {
                    let c = client();
                    // Bounded: at most 60 s of traffic even if the test forgets to stop it.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        // Refused connections and timeouts count as failures too.
                        let body = body_of_addr(&c, addr).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !body.is_some_and(|b| accept.contains(&b.as_str())) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `config activate VERSION --canary canary=true EXTRA…`, run off the async threads (the CLI
/// watches for seconds while the gateways keep serving).
async fn canary_rollout(store: &str, version: i64, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = ["activate", &version.to_string(), "--canary", "canary=true"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    let store = store.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&store, &args)
    })
    .await
    .unwrap()
}

fn store_lifecycle(store: &str, dir: &Path) {
    let v1 = push(store, dir, "one.yaml", &store_document("one", None));
    // Invalid: refused with file, line and reason; kept as REJECTED, never activatable.
    let bad = write(
        dir,
        "bad.yaml",
        &store_document("bad", None).replace("prefix: /", "prefix: no-slash"),
    );
    let (code, out) = cli(store, &["push", &bad, "-m", "broken"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad.yaml:"), "{out}");
    assert!(out.contains("REJECTED"), "{out}");
    let rejected = v1 + 1;
    let v3 = push(store, dir, "three.yaml", &store_document("three", None));

    let (code, out) = cli(store, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{v1}  VALIDATED")), "{out}");
    assert!(out.contains(&format!("{rejected}  REJECTED")), "{out}");
    assert!(out.contains("tester"), "{out}");

    let (code, out) = cli(store, &["diff", &v1.to_string(), &v3.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("-    direct_response: { status: 200, body: \"one\" }"),
        "{out}"
    );
    assert!(
        out.contains("+    direct_response: { status: 200, body: \"three\" }"),
        "{out}"
    );

    let (code, out) = cli(store, &["activate", &rejected.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("can never become ACTIVE") || out.contains("does not validate"),
        "{out}"
    );

    let (code, out) = cli(store, &["activate", &v1.to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(store, &["activate", &v3.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("was {v1}")), "{out}");
    let (_, out) = cli(store, &["show", &v3.to_string()]);
    assert!(out.contains("status:      ACTIVE"), "{out}");
    assert!(out.contains("body: \"three\""), "{out}");

    let (code, out) = cli(store, &["rollback"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(store, &["list"]);
    assert!(out.contains(&format!("{v1}  ACTIVE")), "{out}");
    assert!(out.contains(&format!("{v3}  ROLLED_BACK")), "{out}");
    // Nothing earlier to go back to.
    let (code, out) = cli(store, &["rollback"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn push_list_diff_activate_rollback_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("store.db").display());
    store_lifecycle(&sqlite, dir.path());
    let pg = PostgresServer::start();
    store_lifecycle(&pg.url(), dir.path());
}

/// The store over TLS: a server that rejects plain connections, `sslmode=verify-full` with the
/// CA that signed its certificate (the whole store lifecycle works), and the same with another
/// CA (refused, the reason said).
#[test]
fn the_postgres_store_over_tls_verifies_the_server() {
    let db_ca = ca("database CA");
    let other_ca = ca("another CA");
    let (cert, key, _) = leaf(&db_ca, "db", &["127.0.0.1"]);
    let pg = PostgresServer::start_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "db-ca.pem", &db_ca.pem);
    let other = write(dir.path(), "other-ca.pem", &other_ca.pem);

    let (code, out) = cli(&format!("{}?sslmode=disable", pg.url()), &["list"]);
    assert_ne!(code, 0, "a plain connection was accepted: {out}");
    store_lifecycle(
        &format!("{}?sslmode=verify-full&sslrootcert={ca}", pg.url()),
        dir.path(),
    );
    let (code, out) = cli(
        &format!("{}?sslmode=verify-full&sslrootcert={other}", pg.url()),
        &["list"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_lowercase().contains("certificate") || out.to_lowercase().contains("tls"),
        "the reason: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_follows_survives_the_store_and_restarts_from_last_known_good() {
    let mut pg = PostgresServer::start();
    let store = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let v1 = push(&store, dir.path(), "v1.yaml", &store_document("v1", None));
    assert_eq!(cli(&store, &["activate", &v1.to_string()]).0, 0);
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(
            GatewayProcess::follow(
                &store,
                &format!("gw-{i}"),
                "zone=a",
                tempfile::tempdir().unwrap(),
                None,
            )
            .await,
        );
    }
    // A fourth gateway polls only every 5 s: reaching it within 2 s takes LISTEN/NOTIFY.
    let slow = GatewayProcess::follow_with(
        &store,
        "gw-slow-poll",
        "zone=b",
        tempfile::tempdir().unwrap(),
        None,
        &["--store-poll-ms", "5000"],
    )
    .await;
    let all: Vec<&GatewayProcess> = gws.iter().collect();
    until_all_serve(&all, "v1", Duration::from_secs(5)).await;
    until_all_serve(&[&slow], "v1", Duration::from_secs(5)).await;

    // An activation reaches all four within 2 s (LISTEN/NOTIFY).
    let v2 = push(&store, dir.path(), "v2.yaml", &store_document("v2", None));
    let activated = Instant::now();
    assert_eq!(cli(&store, &["activate", &v2.to_string()]).0, 0);
    let with_slow: Vec<&GatewayProcess> = gws.iter().chain(std::iter::once(&slow)).collect();
    let took = until_all_serve(&with_slow, "v2", Duration::from_secs(2)).await;
    eprintln!(
        "v2 on all four {:?} after activate returned ({:?} including the CLI)",
        took,
        activated.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // one heartbeat
    let (code, out) = cli(&store, &["status"]);
    assert_eq!(code, 0, "{out}");
    for i in 0..3 {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("gw-{i} "))
                && l.contains(&format!("{v2}        {v2}  ok"))),
            "{out}"
        );
    }
    let doc = gws[0].config_document().await;
    assert_eq!(doc["store_version"], v2);
    assert_eq!(doc["last_known_good"], false);
    drop(slow);

    // The store goes away: every gateway keeps serving, no request fails.
    pg.stop();
    let load = Load::start(&[gws[0].addr, gws[1].addr], &["v2"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A gateway restarted while the store is down serves its last-known-good copy.
    let old = gws.remove(2);
    let addrs = (old.addr, old.admin);
    let kept_dir = old.stop_keeping_dir();
    let restarted = GatewayProcess::follow(&store, "gw-2", "zone=a", kept_dir, Some(addrs)).await;
    assert_eq!(body_of(&restarted).await.as_deref(), Some("v2"));
    let doc = restarted.config_document().await;
    assert_eq!(doc["last_known_good"], true, "{doc}");
    assert_eq!(doc["store_version"], v2);
    let (sent, failed) = load.finish().await;
    assert!(sent > 50, "{sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while the store was down"
    );
    let metrics = get(&client(), &format!("http://{}/metrics", gws[0].admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("portcullis_config_store_up 0"),
        "{metrics}"
    );
    gws.push(restarted);

    // The store comes back: the gateways reconnect and follow new versions again.
    pg.restart();
    let v3 = push(&store, dir.path(), "v3.yaml", &store_document("v3", None));
    assert_eq!(cli(&store, &["activate", &v3.to_string()]).0, 0);
    let all: Vec<&GatewayProcess> = gws.iter().collect();
    let took = until_all_serve(&all, "v3", Duration::from_secs(10)).await;
    eprintln!("after the store restart: v3 on all three {took:?} after activate returned");
    let doc = gws[2].config_document().await;
    assert_eq!(doc["last_known_good"], false, "{doc}");

    // Rollback under load: no failed request, the fleet on the previous version within 5 s.
    let load = Load::start(
        &gws.iter().map(|g| g.addr).collect::<Vec<_>>(),
        &["v2", "v3"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (code, out) = cli(&store, &["rollback"]);
    assert_eq!(code, 0, "{out}");
    let took = until_all_serve(&all, "v2", Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eprintln!("rollback: fleet on v2 {took:?} after the CLI returned");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 50);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the rollback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_a_healthy_one_promoted() {
    let dir = tempfile::tempdir().unwrap();
    // SQLite: the zero-setup store works for a fleet on one host too (polling).
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let v1 = push(&store, dir.path(), "v1.yaml", &store_document("v1", None));
    assert_eq!(cli(&store, &["activate", &v1.to_string()]).0, 0);
    let canary = GatewayProcess::follow(
        &store,
        "canary-1",
        "canary=true",
        tempfile::tempdir().unwrap(),
        None,
    )
    .await;
    let others = [
        GatewayProcess::follow(
            &store,
            "main-1",
            "canary=false",
            tempfile::tempdir().unwrap(),
            None,
        )
        .await,
        GatewayProcess::follow(&store, "main-2", "", tempfile::tempdir().unwrap(), None).await,
    ];
    // The CLI picks canaries from heartbeats: wait until every instance has reported.
    for id in ["canary-1", "main-1", "main-2"] {
        status_until(&store, id, "  ok", Duration::from_secs(10)).await;
    }

    // A version whose route goes to an upstream that is not there: 502s on the canary.
    let broken = push(
        &store,
        dir.path(),
        "broken.yaml",
        &store_document("", Some(closed_port())),
    );
    let traffic = {
        let addrs: Vec<SocketAddr> = std::iter::once(canary.addr)
            .chain(others.iter().map(|g| g.addr))
            .collect();
        Load::start(&addrs, &["v1"])
    };
    let watch_others = {
        let addrs: Vec<SocketAddr> = others.iter().map(|g| g.addr).collect();
        tokio::spawn(async move {
            // Sample the non-canary gateways while the canary runs: they must stay on v1.
            let c = client();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                for a in &addrs {
                    seen.push(get(&c, &format!("http://{a}/"), &[]).await.text());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let (code, out) = canary_rollout(
        &store,
        broken,
        &["--watch-s", "5", "--max-error-rate", "0.05"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("canary rolled back: 5xx ratio"), "{out}");
    let (_, list) = cli(&store, &["list"]);
    assert!(list.contains(&format!("{broken}  ROLLED_BACK")), "{list}");
    assert!(list.contains(&format!("{v1}  ACTIVE")), "{list}");
    let (_, shown) = cli(&store, &["show", &broken.to_string()]);
    assert!(shown.contains("reason:      5xx ratio"), "{shown}");
    // The canary is back on v1 within a poll or two; the others never left it.
    until_all_serve(&[&canary], "v1", Duration::from_secs(5)).await;
    let seen = watch_others.await.unwrap();
    assert!(
        !seen.is_empty() && seen.iter().all(|b| b == "v1"),
        "{seen:?}"
    );
    let (_, failed) = traffic.finish().await;
    assert!(failed > 0, "the canary's 502s were seen by clients");

    // A version the canary cannot apply (listener and admin addresses are fixed at start, so
    // this one is refused by the gateway although it validates): rolled back with the reason.
    let unappliable = push(
        &store,
        dir.path(),
        "moved.yaml",
        &store_document("moved", None).replace("${GW_ADMIN}", "127.0.0.1:1"),
    );
    let (code, out) = canary_rollout(&store, unappliable, &["--watch-s", "2"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("canary canary-1 could not apply"), "{out}");
    assert_eq!(
        body_of(&canary).await.as_deref(),
        Some("v1"),
        "the canary kept serving"
    );

    // A canary that does not apply the version in time (stopped: alive by its last heartbeat,
    // silent in fact) is rolled back after --apply-timeout-s, not after the default 30 s.
    let late = push(
        &store,
        dir.path(),
        "late.yaml",
        &store_document("late", None),
    );
    canary.signal(libc::SIGSTOP);
    let started = Instant::now();
    let (code, out) =
        canary_rollout(&store, late, &["--apply-timeout-s", "2", "--watch-s", "2"]).await;
    let took = started.elapsed();
    canary.signal(libc::SIGCONT);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("did not apply version {late} within 2 s")),
        "{out}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "rolled back after {took:?} with --apply-timeout-s 2"
    );
    let (_, list) = cli(&store, &["list"]);
    assert!(list.contains(&format!("{late}  ROLLED_BACK")), "{list}");
    until_all_serve(&[&canary], "v1", Duration::from_secs(5)).await;

    // A healthy version: watched on the canary, then promoted to every instance.
    let good = push(&store, dir.path(), "good.yaml", &store_document("v2", None));
    let (code, out) = canary_rollout(&store, good, &["--watch-s", "2"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promoted to every instance"), "{out}");
    until_all_serve(
        &[&canary, &others[0], &others[1]],
        "v2",
        Duration::from_secs(5),
    )
    .await;
    let (_, list) = cli(&store, &["list"]);
    assert!(list.contains(&format!("{good}  ACTIVE")), "{list}");

    // A canary with no instance carrying the label is refused up front.
    let (code, out) = cli(
        &store,
        &["activate", &v1.to_string(), "--canary", "ring=zero"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no live instance"), "{out}");
}

/// Runs `config status` until its output has a line for `instance` containing `state` (within
/// `limit`); returns (exit code, output).
async fn status_until(store: &str, instance: &str, state: &str, limit: Duration) -> (i32, String) {
    let started = Instant::now();
    loop {
        let (code, out) = cli(store, &["status"]);
        if out
            .lines()
            .any(|l| l.starts_with(&format!("{instance} ")) && l.contains(state))
        {
            return (code, out);
        }
        assert!(
            started.elapsed() < limit,
            "{instance} not {state} after {limit:?}:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_status_exits_2_for_behind_silent_and_failed_instances_and_reload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let v1 = push(&store, dir.path(), "v1.yaml", &store_document("v1", None));
    assert_eq!(cli(&store, &["activate", &v1.to_string()]).0, 0);
    let gw =
        GatewayProcess::follow(&store, "gw-s", "zone=a", tempfile::tempdir().unwrap(), None).await;
    let (code, out) = status_until(&store, "gw-s", "  ok", Duration::from_secs(5)).await;
    assert_eq!(code, 0, "{out}");

    // Store mode: the admin API's reload is refused (a version is activated instead).
    let r = post_empty(&client(), &format!("http://{}/admin/reload", gw.admin)).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("comes from the store"), "{}", r.text());

    // A stopped gateway (SIGSTOP: its last heartbeat is fresh) does not apply v2: BEHIND.
    gw.signal(libc::SIGSTOP);
    let v2 = push(&store, dir.path(), "v2.yaml", &store_document("v2", None));
    assert_eq!(cli(&store, &["activate", &v2.to_string()]).0, 0);
    let (code, out) = status_until(&store, "gw-s", "BEHIND", Duration::from_secs(5)).await;
    assert_eq!(code, 2, "{out}");
    // Without a heartbeat for 10 s: SILENT.
    let (code, out) = status_until(&store, "gw-s", "SILENT", Duration::from_secs(15)).await;
    assert_eq!(code, 2, "{out}");
    // Resumed, it catches up and all is well again.
    gw.signal(libc::SIGCONT);
    until_all_serve(&[&gw], "v2", Duration::from_secs(5)).await;
    let (code, out) = status_until(&store, "gw-s", "  ok", Duration::from_secs(5)).await;
    assert_eq!(code, 0, "{out}");

    // A version this gateway cannot apply (it would move the admin API): FAILED, v2 serves.
    let moved = store_document("v3", None).replace("${GW_ADMIN}", "127.0.0.1:1");
    let v3 = push(&store, dir.path(), "v3.yaml", &moved);
    assert_eq!(cli(&store, &["activate", &v3.to_string()]).0, 0);
    let (code, out) = status_until(
        &store,
        "gw-s",
        &format!("FAILED to apply version {v3}"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(code, 2, "{out}");
    assert_eq!(body_of(&gw).await.as_deref(), Some("v2"));
}
