//! Upstream resilience through real sockets, with test upstreams that are slowed, failed and
//! killed: balancing, breakers, bulkheads, retries, the retry budget, health checks, timeouts.
//! Its tests run one at a time (each takes `ALONE` first): timeouts, backoff and breaker
//! periods are timed.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

fn config(upstreams: &str, routes: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

fn targets(ups: &[&Upstream]) -> String {
    ups.iter()
        .map(|u| format!("      - {{ address: \"{}\" }}\n", u.addr))
        .collect()
}

const ALL_TO_UP: &str = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n";

async fn admin_upstreams(gw: &TestGateway) -> serde_json::Value {
    get(
        &client(),
        &format!("http://{}/admin/upstreams", gw.admin),
        &[],
    )
    .await
    .json()
}

#[tokio::test]
async fn round_robin_weights_hold_within_two_percent_over_10000_requests() {
    let _alone = ALONE.lock().await;
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let ups = format!(
        "  - name: up\n    targets:\n      - {{ address: \"{}\", weight: 5 }}\n      - {{ address: \"{}\", weight: 3 }}\n      - {{ address: \"{}\", weight: 2 }}\n",
        a.addr, b.addr, c.addr
    );
    let gw = TestGateway::start(&config(&ups, ALL_TO_UP)).await;
    let cl = client();
    for _ in 0..10_000 {
        assert_eq!(get(&cl, &gw.url("/x"), &[]).await.status, 200);
    }
    for (up, share) in [(&a, 0.5), (&b, 0.3), (&c, 0.2)] {
        let got = up.count() as f64 / 10_000.0;
        assert!(
            (got - share).abs() <= 0.02,
            "{}: {got} of requests, weight share {share}",
            up.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_fewer_requests_to_a_slow_target() {
    let _alone = ALONE.lock().await;
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start_with(
        "slow",
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(100),
    )
    .await;
    let ups = format!(
        "  - name: up\n    load_balancing: least_request\n    targets:\n{}",
        targets(&[&fast, &slow])
    );
    let gw = TestGateway::start(&config(&ups, ALL_TO_UP)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = gw.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..25 {
                assert_eq!(get(&c, &url, &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (fast.count(), slow.count());
    assert_eq!(f + s, 400);
    assert!(s * 3 < f, "slow target got {s}, fast {f}");
}

#[tokio::test]
async fn consistent_hash_moves_only_about_a_fifth_of_keys_to_an_added_fifth_target() {
    let _alone = ALONE.lock().await;
    let ups: Vec<Upstream> = futures_util::future::join_all(
        (0..5).map(|i| Upstream::start(["a", "b", "c", "d", "e"][i])),
    )
    .await;
    let upstream = |n: usize| {
        let refs: Vec<&Upstream> = ups[..n].iter().collect();
        format!("  - name: up\n    load_balancing: consistent_hash\n    hash_key: header:x-user\n    targets:\n{}", targets(&refs))
    };
    let gw = TestGateway::start(&config(&upstream(4), ALL_TO_UP)).await;
    let c = client();
    let keys = 2000;
    let mut before = HashMap::new();
    for k in 0..keys {
        let key = format!("user-{k}");
        let r = get(&c, &gw.url("/x"), &[("x-user", &key)]).await;
        let who = r.headers["x-upstream"].to_str().unwrap().to_string();
        // Sticky.
        let again = get(&c, &gw.url("/x"), &[("x-user", &key)]).await;
        assert_eq!(again.headers["x-upstream"].to_str().unwrap(), who);
        before.insert(key, who);
    }
    gw.write_config(&config(&upstream(5), ALL_TO_UP));
    gw.gateway.reload().await.unwrap();
    let (mut stayed, mut moved_to_new, mut moved_elsewhere) = (0, 0, 0);
    for (key, old) in &before {
        let r = get(&c, &gw.url("/x"), &[("x-user", key)]).await;
        match r.headers["x-upstream"].to_str().unwrap() {
            now if now == old => stayed += 1,
            "e" => moved_to_new += 1,
            _ => moved_elsewhere += 1,
        }
    }
    let moved_share = f64::from(moved_to_new) / f64::from(keys);
    assert_eq!(moved_elsewhere, 0, "keys moved between the old targets");
    assert!(
        (0.12..=0.28).contains(&moved_share),
        "{moved_share} of keys moved to the new target"
    );
    assert!(
        f64::from(stayed) >= 0.95 * f64::from(keys - moved_to_new),
        "{stayed} stayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_costs_no_client_failures_and_rejoins_when_back() {
    let _alone = ALONE.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let b_addr = b.addr;
    let ups = format!(
        "  - name: up\n    targets:\n{}    connect_timeout_ms: 200\n    health_check: {{ path: /health, interval_ms: 200, timeout_ms: 150, healthy_threshold: 2, unhealthy_threshold: 2 }}\n    circuit_breaker: {{ consecutive_failures: 3, open_ms: 500, half_open_requests: 1 }}\n",
        targets(&[&a, &b, &c])
    );
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n    retries: { attempts: 2, on: [connect_failure, reset, \"503\"], backoff_ms: 5 }\n";
    let gw = TestGateway::start(&config(&ups, routes)).await;
    let cl = client();
    let mut failures = Vec::new();
    let mut b_again = None;
    let mut seen_unhealthy = false;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let r = get(&cl, &gw.url("/work"), &[]).await;
        sent += 1;
        if r.status != 200 {
            failures.push(format!("{} {}", r.status, r.text()));
        }
        if sent == 100 {
            b.stop();
        }
        if sent > 100 && sent % 10 == 0 && !seen_unhealthy {
            let doc = admin_upstreams(&gw).await;
            seen_unhealthy = doc["upstreams"][0]["targets"][1]["healthy"] == false;
        }
        if sent == 100 && b_again.is_none() {
            // Bring b back 1.5 s later on the same address.
            b_again = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Upstream::start_with("b", b_addr, Duration::ZERO).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let b2 = b_again.unwrap().await.unwrap();
    // It failed while it was down (and was marked so), is healthy again now, and serves
    // traffic again.
    assert!(
        seen_unhealthy,
        "the stopped target was never reported unhealthy"
    );
    let doc = admin_upstreams(&gw).await;
    let t = &doc["upstreams"][0]["targets"][1];
    assert_eq!(t["address"], b_addr.to_string());
    assert_eq!(t["healthy"], true, "{doc}");
    assert!(t["failures"].as_u64().unwrap() > 0, "{doc}");
    assert!(b2.count() > 0, "the restarted target got no traffic");
}

#[tokio::test]
async fn breaker_transitions_are_visible_in_the_admin_api() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!(
        "  - name: up\n    targets:\n{}    circuit_breaker: {{ consecutive_failures: 3, open_ms: 400, half_open_requests: 2 }}\n",
        targets(&[&up])
    );
    let gw = TestGateway::start(&config(&ups, ALL_TO_UP)).await;
    let c = client();
    let breaker = |doc: serde_json::Value| doc["upstreams"][0]["targets"][0]["breaker"].clone();

    assert_eq!(breaker(admin_upstreams(&gw).await)["state"], "closed");
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/status/500"), &[]).await.status, 500);
    }
    assert_eq!(breaker(admin_upstreams(&gw).await)["state"], "open");
    // Open: refused at once without reaching the upstream.
    let before = up.count();
    let started = Instant::now();
    let r = get(&c, &gw.url("/ok"), &[]).await;
    r.assert_gateway_error(503);
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(up.count(), before);

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(breaker(admin_upstreams(&gw).await)["state"], "half_open");
    assert_eq!(get(&c, &gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(
        breaker(admin_upstreams(&gw).await)["state"],
        "half_open",
        "one probe of two"
    );
    assert_eq!(get(&c, &gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(breaker(admin_upstreams(&gw).await)["state"], "closed");

    // Open again, then a failed probe re-opens it.
    for _ in 0..3 {
        get(&c, &gw.url("/status/502"), &[]).await;
    }
    assert_eq!(breaker(admin_upstreams(&gw).await)["state"], "open");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get(&c, &gw.url("/status/503"), &[]).await.status, 503);
    let b = breaker(admin_upstreams(&gw).await);
    assert_eq!(b["state"], "open");
    assert_eq!(b["transitions"], 6, "{b}");
}

fn retry_routes(idempotency_key: bool) -> String {
    format!("  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    retries: {{ attempts: 2, on: [\"503\"], backoff_ms: 1, idempotency_key: {idempotency_key} }}\n")
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key_on_an_opted_in_route() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!("  - name: up\n    targets:\n{}", targets(&[&up]));
    let post = |key: Option<&str>| {
        let mut b = Request::post("/status/503");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b
    };
    for (opted_in, key, method_get, want) in [
        (false, None, false, 1),
        (false, Some("k1"), false, 1),
        (true, None, false, 1),
        (true, Some("k2"), false, 3),
        (false, None, true, 3),
    ] {
        let gw = TestGateway::start(&config(&ups, &retry_routes(opted_in))).await;
        let before = up.count();
        let req = if method_get {
            Request::get("/status/503")
        } else {
            post(key)
        };
        let mut req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
        *req.uri_mut() = gw.url("/status/503").parse().unwrap();
        let r = send(&client(), req).await;
        assert_eq!(r.status, 503);
        assert_eq!(
            up.count() - before,
            want,
            "opted_in={opted_in} key={key:?} get={method_get}"
        );
        if want == 3 {
            // The replayed body is the original one.
            assert!(up
                .seen
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(3)
                .all(|s| s.body_len == 2));
        }
    }
}

#[tokio::test]
async fn retry_budget_caps_load_on_a_failing_upstream() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!("  - name: up\n    targets:\n{}", targets(&[&up]));
    let gw = TestGateway::start(&config(&ups, &retry_routes(false))).await;
    let c = client();
    let n = 500;
    for _ in 0..n {
        assert_eq!(get(&c, &gw.url("/status/503"), &[]).await.status, 503);
    }
    let seen = up.count();
    let doc = admin_upstreams(&gw).await;
    eprintln!("{n} client requests, upstream saw {seen}: {doc}");
    assert!(
        seen as f64 <= 1.25 * n as f64,
        "upstream saw {seen} for {n} requests"
    );
    // The 20% budget is used: a budget of 0% would allow only the 10 banked retries plus 3/s.
    assert!(
        seen as f64 >= 1.15 * n as f64,
        "upstream saw {seen} for {n} requests: the budget's 20% was not used"
    );
    assert!(
        doc["upstreams"][0]["retries_denied_by_budget"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_refuses_the_eleventh_request_at_once_and_spares_other_upstreams() {
    let _alone = ALONE.lock().await;
    let hung = Upstream::start("hung").await;
    let healthy = Upstream::start("healthy").await;
    let ups = format!(
        "  - name: hung\n    max_concurrent_requests: 10\n    targets:\n{}  - name: healthy\n    targets:\n{}",
        targets(&[&hung]),
        targets(&[&healthy])
    );
    let routes = "  - name: hung\n    match: { path: { prefix: /sleep } }\n    upstream: hung\n    timeout_ms: 10000\n  - name: healthy\n    match: { path: { prefix: /ok } }\n    upstream: healthy\n";
    let gw = TestGateway::start(&config(&ups, routes)).await;
    let mut hanging = Vec::new();
    for _ in 0..10 {
        let url = gw.url("/sleep/3000");
        hanging.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
    }
    // Wait until all ten are in flight at the upstream.
    for _ in 0..200 {
        if hung.arrivals.load(Ordering::SeqCst) == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hung.arrivals.load(Ordering::SeqCst), 10);
    let c = client();
    let _ = get(&c, &gw.url("/ok"), &[]).await; // warm the connection
    let started = Instant::now();
    let r = get(&c, &gw.url("/sleep/3000"), &[]).await;
    let refused_in = started.elapsed();
    r.assert_gateway_error(503);
    assert!(r.headers.contains_key("retry-after"));
    let started = Instant::now();
    assert_eq!(get(&c, &gw.url("/ok"), &[]).await.status, 200);
    let healthy_in = started.elapsed();
    eprintln!("11th request refused in {refused_in:?}; healthy route answered in {healthy_in:?}");
    assert!(refused_in < Duration::from_millis(50), "{refused_in:?}");
    assert!(healthy_in < Duration::from_millis(100), "{healthy_in:?}");
    assert_eq!(
        hung.arrivals.load(Ordering::SeqCst),
        10,
        "the refused request reached the upstream"
    );
    let doc = admin_upstreams(&gw).await;
    assert_eq!(doc["upstreams"][0]["bulkhead_rejections"], 1, "{doc}");
    for h in hanging {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn the_route_timeout_covers_every_try() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!("  - name: up\n    targets:\n{}", targets(&[&up]));
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n    timeout_ms: 500\n    retries: { attempts: 2, on: [timeout, \"503\"], backoff_ms: 10 }\n  - name: per-try\n    match: { path: { prefix: /per-try } }\n    upstream: up\n    timeout_ms: 1000\n    rewrite: { replace_prefix: { from: /per-try, to: /sleep } }\n    retries: { attempts: 2, on: [timeout], backoff_ms: 1, per_try_timeout_ms: 200 }\n  - name: capped\n    match: { path: { prefix: /capped } }\n    upstream: up\n    timeout_ms: 500\n    rewrite: { replace_prefix: { from: /capped, to: /sleep } }\n    retries: { attempts: 2, on: [timeout], backoff_ms: 1, per_try_timeout_ms: 300 }\n";
    let gw = TestGateway::start(&config(&ups, routes)).await;
    let c = client();
    let started = Instant::now();
    get(&c, &gw.url("/sleep/2000"), &[])
        .await
        .assert_gateway_error(504);
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(600), "{took:?}");
    // Per-try timeouts: three tries of 200 ms each, inside the 1 s route timeout.
    let before = up.arrivals.load(Ordering::SeqCst);
    let started = Instant::now();
    get(&c, &gw.url("/per-try/2000"), &[])
        .await
        .assert_gateway_error(504);
    let took = started.elapsed();
    assert_eq!(up.arrivals.load(Ordering::SeqCst) - before, 3);
    assert!(
        took >= Duration::from_millis(590) && took <= Duration::from_millis(900),
        "{took:?}"
    );
    // Tries of 300 ms under a 500 ms route timeout: the second try is cut off by the route's
    // deadline (at 500 ms, not 600), and no third try starts.
    let before = up.arrivals.load(Ordering::SeqCst);
    let started = Instant::now();
    get(&c, &gw.url("/capped/2000"), &[])
        .await
        .assert_gateway_error(504);
    let took = started.elapsed();
    assert_eq!(up.arrivals.load(Ordering::SeqCst) - before, 2);
    assert!(
        took >= Duration::from_millis(490) && took <= Duration::from_millis(590),
        "{took:?}"
    );
}

#[tokio::test]
async fn every_target_out_answers_503_fast() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!(
        "  - name: up\n    targets:\n{}    health_check: {{ path: /status/500, interval_ms: 100, timeout_ms: 90, unhealthy_threshold: 1 }}\n",
        targets(&[&up])
    );
    let gw = TestGateway::start(&config(&ups, ALL_TO_UP)).await;
    // The first failed check (100 ms period) takes the only target out.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc = admin_upstreams(&gw).await;
        if doc["upstreams"][0]["targets"][0]["healthy"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target never marked unhealthy: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let r = get(&client(), &gw.url("/x"), &[]).await;
    r.assert_gateway_error(503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_removed_by_reload_finishes_its_requests_then_its_connections_close() {
    let _alone = ALONE.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start_with(
        "b",
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(600),
    )
    .await;
    let both = format!("  - name: up\n    targets:\n{}", targets(&[&a, &b]));
    let gw = TestGateway::start(&config(&both, ALL_TO_UP)).await;
    let c = client();
    // Round robin: the first request goes to a, the second to b (slow).
    assert_eq!(get(&c, &gw.url("/x"), &[]).await.headers["x-upstream"], "a");
    let url = gw.url("/x");
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    wait_until("the slow request is at b", Duration::from_secs(5), || {
        b.open_connections.load(Ordering::SeqCst) == 1
    })
    .await;

    gw.write_config(&config(
        &format!("  - name: up\n    targets:\n{}", targets(&[&a])),
        ALL_TO_UP,
    ));
    gw.gateway.reload().await.unwrap();
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.headers["x-upstream"], "a");
    }
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.headers["x-upstream"].to_str().unwrap()),
        (200, "b")
    );
    // Once the old snapshot's last request is done, b's pooled connection is closed.
    for _ in 0..100 {
        if b.open_connections.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.open_connections.load(Ordering::SeqCst),
        0,
        "removed target's connection still open"
    );
    assert_eq!(b.arrivals.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn only_bodies_within_max_replay_bytes_are_retried_and_chunked_bodies_never() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let ups = format!("  - name: up\n    targets:\n{}", targets(&[&up]));
    let routes = "  - name: all\n    match: { path: { prefix: / } }\n    upstream: up\n    retries: { attempts: 2, on: [\"503\"], backoff_ms: 1, max_replay_bytes: 1024 }\n";
    let gw = TestGateway::start(&config(&ups, routes)).await;
    let c = client();
    let put = |len: usize| {
        Request::put(gw.url("/status/503"))
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    // Within the bound: kept, and replayed whole on each of the two retries.
    let before = up.count();
    assert_eq!(send(&c, put(1000)).await.status, 503);
    let seen: Vec<u64> = up.seen.lock().unwrap()[before..]
        .iter()
        .map(|s| s.body_len)
        .collect();
    assert_eq!(seen, vec![1000, 1000, 1000]);
    // Over it: sent once, never retried.
    let before = up.count();
    assert_eq!(send(&c, put(2000)).await.status, 503);
    assert_eq!(up.count() - before, 1);
    // A chunked body has no declared size: sent once, never retried.
    let before = up.count();
    let r = raw(
        gw.addr,
        b"PUT /status/503 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&r), 503, "{r}");
    assert_eq!(up.count() - before, 1);
    assert_eq!(up.last().body_len, 5);
    let doc = admin_upstreams(&gw).await;
    assert_eq!(doc["upstreams"][0]["retries"], 2, "{doc}");
}
