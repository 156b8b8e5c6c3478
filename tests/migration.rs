//! The migration's control-plane half end to end: gateway processes following a real SQLite
//! store, real upstreams, the `portcullis` CLI. A config canary rolled back by a synthetic check
//! and by its p99 gate; a progressive rollout across three gateways that reaches 100% through
//! every step, and one to an upstream that starts failing at 25% that is set back to 0%.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Runs `portcullis ARGS…` off the async threads (it watches for seconds while the gateways
/// keep serving); (exit code, stdout + stderr).
async fn portcullis(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .env("GW_LISTEN", "127.0.0.1:0")
            .env("GW_ADMIN", "127.0.0.1:0")
            .env("USER", "tester")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Clients sending `GET /` to every gateway until stopped (at most 90 s): bodies seen.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(addrs: &[SocketAddr], per_gateway: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for addr in addrs {
            for _ in 0..per_gateway {
                let (stop, addr) = (stop.clone(), *addr);
                tasks.push(tokio::spawn(async move {
                    let c = client();
                    let deadline = Instant::now() + Duration::from_secs(90);
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = tokio::time::timeout(
                            Duration::from_secs(3),
                            get(&c, &format!("http://{addr}/"), &[]),
                        )
                        .await;
                        seen.push(match r {
                            Ok(r) if r.status == 200 => r.text(),
                            Ok(r) => format!("status {}", r.status),
                            Err(_) => "timeout".into(),
                        });
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                    seen
                }));
            }
        }
        Traffic { stop, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// A store document: listener and admin from the gateway's environment; route `orders` (all
/// paths) with `action`, upstreams `v1`, `v2`, `v3` at `ups`; `route_extra` appended.
fn document(ups: &[SocketAddr; 3], action: &str, route_extra: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "${{GW_LISTEN}}" }}]
admin: {{ address: "${{GW_ADMIN}}" }}
defaults: {{ auth: none }}
upstreams:
  - {{ name: v1, targets: [{{ address: "{}" }}] }}
  - {{ name: v2, targets: [{{ address: "{}" }}] }}
  - {{ name: v3, targets: [{{ address: "{}" }}] }}
routes:
  - name: orders
    match: {{ path: {{ prefix: / }} }}
    # the upstream serving the route
    {action}
{route_extra}"#,
        ups[0], ups[1], ups[2]
    )
}

/// A service answering 200 with `name` (or 500 while `failing`).
async fn named(name: &'static str, failing: Arc<AtomicBool>) -> Service {
    Service::start(move |_| {
        if failing.load(Ordering::SeqCst) {
            Answer {
                status: 500,
                headers: vec![],
                body: bytes::Bytes::from_static(b"broken"),
                delay: Duration::ZERO,
            }
        } else {
            Answer {
                status: 200,
                headers: vec![("content-type", "text/plain".into())],
                body: bytes::Bytes::from(name),
                delay: Duration::ZERO,
            }
        }
    })
    .await
}

async fn until_reported(store: &str, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out) = cli(store, &["status"]);
        if ids.iter().all(|id| {
            out.lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("  ok"))
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every instance reported:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const POLL: &[&str] = &["--store-poll-ms", "200"];

/// `portcullis rollout orders --to TO` in five 2-second steps, gated at a 5% failed-try ratio
/// from 3 tries on; `extra` arguments appended.
async fn rollout_orders(store: &str, to: &str, extra: &[&str]) -> (i32, String) {
    let mut args = strings(&[
        "rollout",
        "orders",
        "--to",
        to,
        "--steps",
        "5,25,50,75,100",
        "--interval-s",
        "2",
        "--max-error-rate",
        "0.05",
        "--min-requests",
        "3",
        "--store",
        store,
    ]);
    args.extend(strings(extra));
    portcullis(args).await
}

/// A store with version 1 active (route `orders` on `v1`) and the three upstreams, `v3`
/// answering 500 while `v3_failing`.
struct Setup {
    dir: tempfile::TempDir,
    store: String,
    ups: [Service; 3],
    addrs: [SocketAddr; 3],
}

async fn setup(v3_failing: Arc<AtomicBool>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let ups = [
        named("v1", Arc::new(AtomicBool::new(false))).await,
        named("v2", Arc::new(AtomicBool::new(false))).await,
        named("v3", v3_failing).await,
    ];
    let addrs = [ups[0].addr, ups[1].addr, ups[2].addr];
    let v1 = push(
        &store,
        dir.path(),
        "v1.yaml",
        &document(&addrs, "upstream: v1", ""),
    );
    assert_eq!(cli(&store, &["activate", &v1.to_string()]).0, 0);
    Setup {
        dir,
        store,
        ups,
        addrs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_canary_is_rolled_back_by_a_failed_synthetic_check_and_by_its_p99_gate() {
    let Setup {
        dir,
        store,
        ups: _ups,
        addrs,
    } = setup(Arc::new(AtomicBool::new(false))).await;
    let canary = GatewayProcess::follow_with(
        &store,
        "canary-1",
        "canary=true",
        tempfile::tempdir().unwrap(),
        None,
        POLL,
    )
    .await;
    let _main = GatewayProcess::follow_with(
        &store,
        "main-1",
        "",
        tempfile::tempdir().unwrap(),
        None,
        POLL,
    )
    .await;
    until_reported(&store, &["canary-1", "main-1"]).await;
    let checks = write(
        dir.path(),
        "checks.yaml",
        "- name: orders answer from v1\n  path: /orders/1\n  expect_status: 200\n  expect_body_contains: v1\n",
    );

    // v2 serves without a single 5xx, but not what the check expects.
    let wrong = push(
        &store,
        dir.path(),
        "wrong.yaml",
        &document(&addrs, "upstream: v2", ""),
    );
    let (code, out) = portcullis(strings(&[
        "config",
        "--store",
        &store,
        "activate",
        &wrong.to_string(),
        "--canary",
        "canary=true",
        "--watch-s",
        "2",
        "--checks",
        &checks,
    ]))
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("synthetic check `orders answer from v1`")
            && out.contains("does not contain \"v1\""),
        "{out}"
    );
    let (_, shown) = cli(&store, &["show", &wrong.to_string()]);
    assert!(
        shown.contains("reason:      synthetic check `orders answer from v1`"),
        "{shown}"
    );
    assert!(cli(&store, &["list"]).1.contains("      1  ACTIVE"));

    // The canary is back on v1 within a poll or two.
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&c, &format!("http://{}/", canary.addr), &[])
        .await
        .text()
        != "v1"
    {
        assert!(
            Instant::now() < deadline,
            "the canary did not go back to v1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // v1 again with every request delayed 600 ms: no 5xx, but the p99 gate says no.
    let slow = push(
        &store,
        dir.path(),
        "slow.yaml",
        &document(
            &addrs,
            "upstream: v1",
            "    fault: { delay: { ms: 600, percent: 100 } }\n",
        ),
    );
    let traffic = Traffic::start(&[canary.addr], 4);
    let (code, out) = portcullis(strings(&[
        "config",
        "--store",
        &store,
        "activate",
        &slow.to_string(),
        "--canary",
        "canary=true",
        "--watch-s",
        "6",
        "--max-p99-ms",
        "300",
        "--checks",
        &checks,
    ]))
    .await;
    let seen = traffic.finish().await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("canary rolled back: p99 latency"), "{out}");
    assert!(out.contains("above 300 ms"), "{out}");
    let other: Vec<&String> = seen.iter().filter(|b| *b != "v1").collect();
    assert!(other.is_empty(), "no request failed meanwhile: {other:?}");

    // A version that passes both: promoted after its checks.
    let good = push(
        &store,
        dir.path(),
        "good.yaml",
        &document(&addrs, "upstream: v1", "    timeout_ms: 5000\n"),
    );
    let traffic = Traffic::start(&[canary.addr], 2);
    let (code, out) = portcullis(strings(&[
        "config",
        "--store",
        &store,
        "activate",
        &good.to_string(),
        "--canary",
        "canary=true",
        "--watch-s",
        "2",
        "--max-p99-ms",
        "300",
        "--checks",
        &checks,
    ]))
    .await;
    traffic.finish().await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 synthetic check(s) passed on the canaries"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_every_step_and_one_to_an_upstream_failing_at_25_percent_goes_back_to_0()
{
    let v3_failing = Arc::new(AtomicBool::new(false));
    let Setup {
        dir: _dir,
        store: store_url,
        ups,
        addrs: _,
    } = setup(v3_failing.clone()).await;
    let mut gws = Vec::new();
    for id in ["gw-1", "gw-2", "gw-3"] {
        gws.push(
            GatewayProcess::follow_with(
                &store_url,
                id,
                "",
                tempfile::tempdir().unwrap(),
                None,
                POLL,
            )
            .await,
        );
    }
    until_reported(&store_url, &["gw-1", "gw-2", "gw-3"]).await;
    let gw_addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();

    // To a healthy upstream: every step, then 100%.
    let traffic = Traffic::start(&gw_addrs, 2);
    let (code, out) = rollout_orders(&store_url, "v2", &["--max-p99-ms", "1000"]).await;
    assert_eq!(code, 0, "{out}");
    for (i, p) in [5, 25, 50, 75, 100].iter().enumerate() {
        assert!(
            out.contains(&format!("step {} of 5: version", i + 1))
                && out.contains(&format!("sends {p}% to v2")),
            "{out}"
        );
    }
    assert!(out.contains("rollout of orders done: 100% to v2"), "{out}");
    let (_, list) = cli(&store_url, &["list"]);
    for p in [5, 25, 50, 75, 100] {
        assert!(
            list.contains(&format!("rollout orders: {p}% to v2 (step")),
            "{list}"
        );
    }
    // Every answer meanwhile was from v1 or v2; now all are from v2.
    let seen = traffic.finish().await;
    assert!(
        seen.iter().all(|b| b == "v1" || b == "v2"),
        "{:?}",
        seen.iter().find(|b| *b != "v1" && *b != "v2")
    );
    assert!(ups[1].count() > 0);
    let c = client();
    for g in &gw_addrs {
        assert_eq!(get(&c, &format!("http://{g}/"), &[]).await.text(), "v2");
    }
    let (_, status) = portcullis(strings(&["rollout", "status", "--store", &store_url])).await;
    assert!(
        status.contains("rollout orders: v1 → v2 at 100% (DONE)"),
        "{status}"
    );
    // The route's comment and the rest of the document are as written.
    let (_, shown) = cli(&store_url, &["show", "6"]);
    assert!(
        shown.contains("    # the upstream serving the route\n    upstream: v2\n"),
        "{shown}"
    );

    // To v3, which starts answering 500 once it has 25%.
    let store = portcullis::control::store::Store::connect(&store_url)
        .await
        .unwrap();
    let flip = {
        let failing = v3_failing.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let now = store.route_rollouts("default").await.unwrap();
                if now.iter().any(|r| r.to_upstream == "v3" && r.percent == 25) {
                    failing.store(true, Ordering::SeqCst);
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    };
    let traffic = Traffic::start(&gw_addrs, 2);
    let (code, out) = rollout_orders(&store_url, "v3", &[]).await;
    assert!(flip.await.unwrap(), "the rollout never reached 25%");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("25%: v3 failed-try ratio"), "{out}");
    assert!(out.contains("rollout of orders rolled back to 0%"), "{out}");
    assert!(!out.contains("sends 50% to v3"), "{out}");
    // Back on v2 everywhere, within a poll or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    'wait: loop {
        for g in &gw_addrs {
            if get(&c, &format!("http://{g}/"), &[]).await.text() != "v2" {
                assert!(Instant::now() < deadline, "not back on v2");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
        }
        break;
    }
    traffic.finish().await;
    let (_, list) = cli(&store_url, &["list"]);
    assert!(
        list.contains("rollout orders: 5% to v3 (step 1 of 5)"),
        "{list}"
    );
    assert!(
        list.contains("rollout orders: 25% to v3 (step 2 of 5)"),
        "{list}"
    );
    assert!(
        list.contains("rollout orders: 0% to v3 (rolled back)"),
        "{list}"
    );
    let (_, status) = cli(&store_url, &["status"]);
    assert!(
        status.contains("rollout orders: v2 → v3 at 0% (ROLLED_BACK)")
            && status.contains("failed-try ratio"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_stops_where_it_is_and_resumes_from_there() {
    let Setup {
        dir: _dir,
        store: store_url,
        ups: _ups,
        addrs: _,
    } = setup(Arc::new(AtomicBool::new(false))).await;
    let gw = GatewayProcess::follow_with(
        &store_url,
        "gw-1",
        "",
        tempfile::tempdir().unwrap(),
        None,
        POLL,
    )
    .await;
    until_reported(&store_url, &["gw-1"]).await;
    let traffic = Traffic::start(&[gw.addr], 2);

    // A long interval: the rollout sits at 5% until it is paused.
    let rollout = tokio::spawn(portcullis(strings(&[
        "rollout",
        "orders",
        "--to",
        "v2",
        "--steps",
        "5,50,100",
        "--interval-s",
        "60",
        "--min-requests",
        "1",
        "--store",
        &store_url,
    ])));
    let store = portcullis::control::store::Store::connect(&store_url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = store.route_rollouts("default").await.unwrap();
        if now.iter().any(|r| r.percent == 5 && r.state == "RUNNING") {
            break;
        }
        assert!(Instant::now() < deadline, "never at 5%: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out) = portcullis(strings(&[
        "rollout", "orders", "--pause", "--store", &store_url,
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = tokio::time::timeout(Duration::from_secs(10), rollout)
        .await
        .expect("the paused rollout stops at its next check")
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rollout of orders stopped: paused by the operator at 5%"),
        "{out}"
    );
    let (_, status) = portcullis(strings(&["rollout", "status", "--store", &store_url])).await;
    assert!(
        status.contains("rollout orders: v1 → v2 at 5% (PAUSED)"),
        "{status}"
    );
    // Paused, the weight stays: some answers from each.
    let c = client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(get(&c, &format!("http://{}/", gw.addr), &[]).await.text());
    }
    assert!(seen.contains("v1") && seen.contains("v2"), "{seen:?}");

    // Resumed with a short interval: from the next step, with the recorded plan.
    let (code, out) = portcullis(strings(&[
        "rollout",
        "orders",
        "--resume",
        "--interval-s",
        "1",
        "--store",
        &store_url,
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("sends 5% to v2"), "{out}");
    assert!(
        out.contains("step 2 of 3: version") && out.contains("sends 50% to v2"),
        "{out}"
    );
    assert!(
        out.contains("step 3 of 3: version") && out.contains("sends 100% to v2"),
        "{out}"
    );
    traffic.finish().await;
    let (_, list) = cli(&store_url, &["list"]);
    assert_eq!(
        list.matches("rollout orders: 5% to v2").count(),
        1,
        "{list}"
    );
    let (_, status) = cli(&store_url, &["status"]);
    assert!(
        status.contains("rollout orders: v1 → v2 at 100% (DONE)"),
        "{status}"
    );
}
