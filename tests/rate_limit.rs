//! Rate limiting end to end: exact token buckets over real time, headers field by field, key
//! isolation, stacked limits that give back what a refused request took, shadow mode, limits
//! that survive a reload, and Redis-backed limits shared by three gateway processes, including
//! Redis being killed, hung (SIGSTOP) and coming back. The outage tests compare latency
//! percentiles, so this binary's tests run one at a time (each takes `ALONE` first).

mod support;

use std::time::{Duration, Instant};
use support::*;

fn config(up: &Upstream, limits: &str, routes: &str, redis: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"{{LISTEN}}\" }}]\nadmin: {{ address: \"{{ADMIN}}\" }}\ndefaults: {{ auth: none }}\n{redis}rate_limits:\n{limits}upstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n{routes}",
        up.addr
    )
}

fn local(yaml: &str) -> String {
    yaml.replace("{LISTEN}", "127.0.0.1:0")
        .replace("{ADMIN}", "127.0.0.1:0")
}

fn route(name: &str, prefix: &str, limits: &str) -> String {
    format!("  - name: {name}\n    match: {{ path: {{ prefix: {prefix} }} }}\n    upstream: up\n    rate_limits: [{limits}]\n")
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

async fn burst(c: &HttpClient, url: &str, n: usize, headers: &[(&str, &str)]) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match get(c, url, headers).await.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn token_bucket_admits_capacity_then_the_refill_rate_with_headers() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&local(&config(
        &up,
        "  - { name: burst, algorithm: token_bucket, capacity: 10, refill_per_second: 5, key: [client_ip] }\n",
        &route("api", "/api", "burst"),
        "",
    )))
    .await;
    let c = client();
    let url = gw.url("/api/x");
    let before = up.count();

    // Allowed responses carry the headers, counting down.
    let first = get(&c, &url, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "ratelimit-policy"), "\"burst\";q=10;w=2");
    assert_eq!(header(&first, "ratelimit"), "\"burst\";r=9;t=1");
    assert_eq!(header(&first, "x-ratelimit-limit"), "10");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "9");
    assert_eq!(header(&first, "x-ratelimit-reset"), "1");
    assert!(first.headers.get("retry-after").is_none());
    let (ok, limited) = burst(&c, &url, 12, &[]).await;
    assert_eq!((ok, limited), (9, 3), "exactly the capacity at once");

    // The refusal: 429, JSON body, Retry-After and the same fields.
    let refused = get(&c, &url, &[("x-request-id", "rl-1")]).await;
    refused.assert_gateway_error(429);
    assert_eq!(refused.json()["request_id"], "rl-1");
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "x-ratelimit-limit"), "10");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"burst\";q=10;w=2");
    assert!(header(&refused, "ratelimit").starts_with("\"burst\";r=0;t="));
    assert_eq!(
        up.count() - before,
        10,
        "refused requests never reach the upstream"
    );

    // Then 5 per second.
    for second in 1..=2 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (ok, _) = burst(&c, &url, 8, &[]).await;
        assert!(
            t.elapsed() < Duration::from_millis(1190),
            "too slow to measure"
        );
        assert_eq!(ok, 5, "second {second}");
    }
}

#[tokio::test]
async fn keys_isolate_clients_and_missing_headers_share_one_bucket() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&local(&config(
        &up,
        "  - { name: per-tenant, algorithm: sliding_window, limit: 3, window_s: 60, key: [\"header:x-tenant\", route] }\n",
        &format!("{}{}", route("a", "/a", "per-tenant"), route("b", "/b", "per-tenant")),
        "",
    )))
    .await;
    let c = client();
    let (ok, limited) = burst(&c, &gw.url("/a"), 5, &[("x-tenant", "acme")]).await;
    assert_eq!((ok, limited), (3, 2), "tenant A exhausted");
    assert_eq!(
        burst(&c, &gw.url("/a"), 3, &[("x-tenant", "globex")]).await,
        (3, 0),
        "tenant B unaffected"
    );
    assert_eq!(
        burst(&c, &gw.url("/b"), 3, &[("x-tenant", "acme")]).await,
        (3, 0),
        "route is part of the key"
    );
    // Without the header: one shared bucket, not a way around the limit.
    assert_eq!(burst(&c, &gw.url("/a"), 5, &[]).await, (3, 2));
    let r = get(&c, &gw.url("/b"), &[("x-tenant", "acme")]).await;
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-tenant\";q=3;w=60");
}

#[tokio::test]
async fn stacked_limits_refuse_at_the_first_no_and_give_back_the_rest() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&local(&config(
        &up,
        "  - { name: global, algorithm: token_bucket, capacity: 5, refill_per_second: 0.001, key: [] }\n  - { name: tight, algorithm: token_bucket, capacity: 2, refill_per_second: 0.001, key: [client_ip] }\n  - { name: watch, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001, key: [], mode: shadow }\n",
        &format!("{}{}", route("both", "/both", "tight, watch"), route("only", "/only", "")),
        "",
    ))
    .replace("defaults: { auth: none }", "defaults: { auth: none, rate_limits: [global] }"))
    .await;
    let c = client();
    let r = get(&c, &gw.url("/both"), &[]).await;
    assert_eq!(r.status, 200);
    // Both enforced limits are reported; the lowest remaining goes in X-RateLimit-*; the
    // shadow limit is never shown.
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"global\";q=5;w=5000, \"tight\";q=2;w=2000"
    );
    assert_eq!(header(&r, "ratelimit").split(", ").count(), 2);
    assert_eq!(header(&r, "x-ratelimit-limit"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "1");
    // The shadow limit (capacity 1) is exceeded from now on, and never refuses.
    assert_eq!(burst(&c, &gw.url("/both"), 3, &[]).await, (1, 2));
    // `tight` refused two: `global` must have given those back (5 − 2 taken = 3 left).
    let r = get(&c, &gw.url("/only"), &[]).await;
    assert_eq!(
        header(&r, "x-ratelimit-remaining"),
        "2",
        "3 left before this one"
    );
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    for (series, want) in [
        (
            "portcullis_ratelimit_decisions_total{limit=\"tight\",result=\"limited\"}",
            2,
        ),
        (
            "portcullis_ratelimit_decisions_total{limit=\"tight\",result=\"allowed\"}",
            2,
        ),
        (
            "portcullis_ratelimit_decisions_total{limit=\"global\",result=\"allowed\"}",
            5,
        ),
        (
            "portcullis_ratelimit_decisions_total{limit=\"watch\",result=\"shadow_limited\"}",
            1,
        ),
        (
            "portcullis_ratelimit_decisions_total{limit=\"watch\",result=\"allowed\"}",
            1,
        ),
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series}"));
        assert_eq!(line, format!("{series} {want}"));
    }
}

#[tokio::test]
async fn limits_survive_a_reload_unless_their_definition_changes() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let limits = "  - { name: small, algorithm: token_bucket, capacity: 2, refill_per_second: 0.001, key: [client_ip] }\n";
    let yaml = local(&config(&up, limits, &route("api", "/api", "small"), ""));
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    assert_eq!(burst(&c, &gw.url("/api"), 3, &[]).await, (2, 1));
    // Another route added: same limit definition, counters kept.
    gw.write_config(&format!("{yaml}{}", route("other", "/other", "small")));
    let applied = gw.gateway.reload().await.unwrap();
    assert!(applied.changed);
    assert_eq!(
        burst(&c, &gw.url("/api"), 1, &[]).await,
        (0, 1),
        "not reset by reload"
    );
    // The definition changed: a new limit, new counters.
    gw.write_config(&yaml.replace("capacity: 2", "capacity: 3"));
    gw.gateway.reload().await.unwrap();
    assert_eq!(burst(&c, &gw.url("/api"), 4, &[]).await, (3, 1));
}

/// Three gateway processes sharing one Redis: what they admit together stays within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_admit_the_limit_and_no_more() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start().await;
    three_instances_admit_the_limit(&format!("redis: {{ url: \"{}\" }}\n", redis.url())).await;
}

/// The same accuracy test against a 3-master Redis Cluster: each limit's key lives in one slot
/// (every script touches one key), wherever the cluster put it.
#[tokio::test]
async fn three_instances_sharing_a_redis_cluster_admit_the_limit_and_no_more() {
    let _alone = ALONE.lock().await;
    let nodes = RedisServer::start_cluster().await;
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port))
        .collect();
    three_instances_admit_the_limit(&format!(
        "redis: {{ url: \"redis://127.0.0.1/0\", timeout_ms: 200, cluster: {{ nodes: [{}] }} }}\n",
        list.join(", ")
    ))
    .await;
}

/// Three gateway processes sharing a token bucket and a sliding window of 300 through `redis`:
/// 600 requests each, spread over the three, admit exactly 300.
async fn three_instances_admit_the_limit(redis: &str) {
    let up = Upstream::start("up").await;
    let yaml = config(
        &up,
        "  - { name: shared-bucket, algorithm: token_bucket, capacity: 300, refill_per_second: 0.001, key: [route], store: redis }\n  - { name: shared-window, algorithm: sliding_window, limit: 300, window_s: 3600, key: [route], store: redis }\n",
        &format!("{}{}", route("bucket", "/bucket", "shared-bucket"), route("window", "/window", "shared-window")),
        redis,
    );
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(GatewayProcess::spawn(&yaml, 1).await);
    }
    let addrs: Vec<_> = gws.iter().map(|g| g.addr).collect();
    // The window case must not straddle a window boundary (Redis's clock is this machine's).
    let into_window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 3600.0;
    if into_window > 3590.0 {
        tokio::time::sleep(Duration::from_secs_f64(3600.5 - into_window)).await;
    }
    for path in ["/bucket", "/window"] {
        // Four concurrent clients, each spreading 150 requests round-robin over the three.
        let mut tasks = Vec::new();
        for t in 0..4 {
            let addrs = addrs.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut ok = 0;
                for i in 0..150 {
                    let addr = addrs[(i + t) % 3];
                    let r = get(&c, &format!("http://{addr}{path}"), &[]).await;
                    match r.status.as_u16() {
                        200 => ok += 1,
                        429 => {}
                        s => panic!("unexpected {s}"),
                    }
                }
                ok
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        assert!(
            admitted <= 300,
            "{path}: {admitted} admitted, above the limit"
        );
        assert!(
            admitted >= 297,
            "{path}: {admitted} admitted, below 99% of the limit"
        );
    }
}

/// 99th-percentile latency of `n` sequential requests, each of which must answer `status`
/// (so a fast refusal can never pass for a fast answer). `n` is 1,000 so that the
/// percentile drops 10 samples, more than the default breaker threshold of 3 slow calls.
async fn p99(c: &HttpClient, url: &str, n: usize, status: u16) -> Duration {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = get(c, url, &[]).await;
        v.push(t.elapsed());
        assert_eq!(r.status, status, "{url} request {i}: {}", r.text());
    }
    v.sort();
    v[(n * 99 / 100).min(n - 1)]
}

/// The rate-limit store's breaker state, read from the admin metrics.
async fn store_up(c: &HttpClient, gw: &TestGateway) -> bool {
    let metrics = get(c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    if metrics.contains("portcullis_ratelimit_store_up{store=\"redis\"} 1") {
        return true;
    }
    assert!(
        metrics.contains("portcullis_ratelimit_store_up{store=\"redis\"} 0"),
        "no store_up series"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_each_failure_mode_then_recovery() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let mut redis = RedisServer::start().await;
    let yaml = config(
        &up,
        "  - { name: fallback, algorithm: token_bucket, capacity: 5, refill_per_second: 0.001, key: [route], store: redis, on_store_failure: local_fallback }\n  - { name: open, algorithm: token_bucket, capacity: 1000000, refill_per_second: 1, key: [route], store: redis, on_store_failure: allow }\n  - { name: closed, algorithm: token_bucket, capacity: 1000000, refill_per_second: 1, key: [route], store: redis, on_store_failure: deny }\n",
        &(format!(
            "{}{}{}",
            route("fb", "/fb", "fallback"),
            route("open", "/open", "open"),
            route("closed", "/closed", "closed")
        ) + "  - name: plain\n    match: { path: { prefix: /plain } }\n    upstream: up\n"),
        &format!("redis: {{ url: \"{}\", timeout_ms: 50 }}\n", redis.url()),
    );
    let gw = TestGateway::start(&local(&yaml)).await;
    let c = client();
    // Through Redis: the fallback limit's 5 are spent in Redis.
    assert_eq!(burst(&c, &gw.url("/fb"), 6, &[]).await, (5, 1));
    assert_eq!(get(&c, &gw.url("/closed"), &[]).await.status, 200);
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/open"), &[]).await.status, 200);
    }

    redis.kill();
    // allow: served (every one of them, asserted); deny: 503 with a JSON error;
    // local_fallback: per-instance limit of 5. Like with like: while the breaker is open the
    // limited route makes no Redis call, so it is compared with a route that has no limit.
    let down = p99(&c, &gw.url("/open"), 1000, 200).await;
    let unlimited = p99(&c, &gw.url("/plain"), 1000, 200).await;
    eprintln!("p99 with redis down {down:?}, route without limits {unlimited:?}");
    assert!(
        down <= unlimited + Duration::from_millis(2),
        "p99 while Redis is down {down:?} vs {unlimited:?} without limits"
    );
    let r = get(&c, &gw.url("/closed"), &[("x-request-id", "deny-1")]).await;
    r.assert_gateway_error(503);
    assert_eq!(r.json()["request_id"], "deny-1");
    assert_eq!(
        burst(&c, &gw.url("/fb"), 7, &[]).await,
        (5, 2),
        "local fallback limit"
    );
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(metrics.contains("portcullis_ratelimit_store_up{store=\"redis\"} 0"));

    // Back: enforcement through Redis resumes within 5 s (the Redis bucket is new, so the
    // fallback route admits 5 again, counted in Redis).
    redis.restart().await;
    let back = Instant::now();
    loop {
        if get(&c, &gw.url("/closed"), &[]).await.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("redis enforcement back after {:?}", back.elapsed());
    assert_eq!(burst(&c, &gw.url("/fb"), 6, &[]).await, (5, 1));
    let keys = redis.command(&["DBSIZE"]).await.unwrap();
    assert!(
        keys.starts_with(':') && keys != ":0",
        "keys written to Redis again: {keys}"
    );
}

/// A hung Redis (SIGSTOP: the connection stays open, nothing answers) is the case the timeout
/// and the breaker exist for: the first `breaker_failures` decisions each wait `timeout_ms`
/// and are then allowed; after that no request waits at all until the probe is due; the probe
/// waits once; and a resumed Redis is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_the_breaker_threshold_in_timeouts_then_nothing() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let redis = RedisServer::start().await;
    let yaml = config(
        &up,
        "  - { name: open, algorithm: token_bucket, capacity: 1000000, refill_per_second: 1, key: [route], store: redis, on_store_failure: allow }\n",
        &(route("open", "/open", "open")
            + "  - name: plain\n    match: { path: { prefix: /plain } }\n    upstream: up\n"),
        // 200 ms so that a wait for Redis stands far above a debug build's own latency; the
        // probe is 5 s away so the measurement below sees the open breaker only.
        &format!(
            "redis: {{ url: \"{}\", timeout_ms: 200, breaker_failures: 3, breaker_open_ms: 5000 }}\n",
            redis.url()
        ),
    );
    let gw = TestGateway::start(&local(&yaml)).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/open"), &[]).await.status, 200);
    }
    assert!(store_up(&c, &gw).await);

    redis.pause();
    let hung = Instant::now();
    // The first three each meet the 200 ms timeout (not a refusal: the socket is open) and
    // are allowed; the breaker is then open.
    for i in 0..3 {
        let t = Instant::now();
        let r = get(&c, &gw.url("/open"), &[]).await;
        let took = t.elapsed();
        assert_eq!(r.status, 200, "allowed while Redis hangs: {}", r.text());
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(600),
            "decision {i} with Redis hung took {took:?}, expected the 200 ms timeout"
        );
    }
    assert!(!store_up(&c, &gw).await, "breaker open after 3 timeouts");
    let down = p99(&c, &gw.url("/open"), 300, 200).await;
    let unlimited = p99(&c, &gw.url("/plain"), 300, 200).await;
    eprintln!("hung redis, breaker open: p99 {down:?}, route without limits {unlimited:?}");
    assert!(
        hung.elapsed() < Duration::from_millis(4800),
        "measured past the probe time ({:?}); the comparison is void",
        hung.elapsed()
    );
    assert!(
        down <= unlimited + Duration::from_millis(2),
        "p99 with the breaker open {down:?} vs {unlimited:?} without limits"
    );

    // The probe: once the open period is over, exactly one request waits for the timeout.
    while hung.elapsed() < Duration::from_millis(5700) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slow = 0;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get(&c, &gw.url("/open"), &[]).await.status, 200);
        if t.elapsed() >= Duration::from_millis(150) {
            slow += 1;
        }
    }
    assert_eq!(slow, 1, "one probe per open period waits for Redis");

    // Resumed: the next probe succeeds and decisions go through Redis again.
    redis.resume();
    let back = Instant::now();
    while !store_up(&c, &gw).await {
        assert_eq!(get(&c, &gw.url("/open"), &[]).await.status, 200);
        assert!(
            back.elapsed() < Duration::from_secs(8),
            "Redis not used again within 8 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = redis.command(&["DBSIZE"]).await.unwrap();
    redis.command(&["FLUSHDB"]).await.unwrap();
    assert_eq!(get(&c, &gw.url("/open"), &[]).await.status, 200);
    let after = redis.command(&["DBSIZE"]).await.unwrap();
    assert_eq!(
        after, ":1",
        "the decision after recovery wrote its bucket (before: {before})"
    );
}

/// Redis over TLS: `rediss://` with `redis.ca_file` — a Redis-backed limit decides through the
/// TLS port (the server's name verified); with a CA that did not sign the server's certificate
/// the store is unusable and the limit's `on_store_failure: deny` answers 503.
#[tokio::test]
async fn a_redis_limit_over_tls_and_a_wrong_ca_refused() {
    let redis_ca = ca("redis CA");
    let (ca_pem, other_pem) = (redis_ca.pem.clone(), ca("another CA").pem);
    let (cert, key, _) = leaf(&redis_ca, "redis", &["127.0.0.1"]);
    let redis = RedisServer::start_tls(&cert, &key, &ca_pem).await;
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&right, &ca_pem).unwrap();
    std::fs::write(&wrong, &other_pem).unwrap();
    let up = Upstream::start("up").await;
    let gateway = |ca: &std::path::Path| {
        config(
            &up,
            "  - { name: two, algorithm: token_bucket, capacity: 2, refill_per_second: 0.001, key: [route], store: redis, on_store_failure: deny }\n",
            &route("tls", "/tls", "two"),
            &format!(
                "redis: {{ url: \"{}\", timeout_ms: 500, ca_file: \"{}\" }}\n",
                redis.tls_url(),
                ca.display()
            ),
        )
    };
    let gw = TestGateway::start(&local(&gateway(&right))).await;
    let c = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&c, &gw.url("/tls"), &[]).await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429], "decided in Redis over TLS");
    drop(gw);
    let gw = TestGateway::start(&local(&gateway(&wrong))).await;
    get(&c, &gw.url("/tls"), &[])
        .await
        .assert_gateway_error(503);
}

/// Redis Sentinel: two gateways share a limit through a primary the sentinels watch (one
/// primary, one replica, three sentinels). The primary is killed mid-run; the sentinels promote
/// the replica, and both gateways follow by themselves, answering with the limit's
/// `on_store_failure` (deny: 503) in between. The gap is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_follow_a_sentinel_failover() {
    let mut primary = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&primary).await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisServer::start_sentinel("portcullis", &primary).await);
    }
    // The replica is in sync before anything is counted.
    let synced = Instant::now() + Duration::from_secs(10);
    while !replica
        .info("replication")
        .await
        .is_some_and(|i| i.contains("master_link_status:up"))
    {
        assert!(Instant::now() < synced, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    let up = Upstream::start("up").await;
    let yaml = local(&config(
        &up,
        "  - { name: shared, algorithm: sliding_window, limit: 100000, window_s: 3600, key: [route], store: redis, on_store_failure: deny }\n",
        &route("api", "/api", "shared"),
        &format!(
            "redis: {{ url: \"redis://127.0.0.1/0\", timeout_ms: 200, breaker_failures: 1, breaker_open_ms: 200, sentinel: {{ master_name: portcullis, nodes: [{}] }} }}\n",
            nodes.join(", ")
        ),
    ));
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    let c = client();
    for gw in [&a, &b] {
        assert_eq!(get(&c, &gw.url("/api"), &[]).await.status, 200);
    }
    let remaining = |r: &Reply| header(r, "ratelimit");
    let before = remaining(&get(&c, &b.url("/api"), &[]).await);

    primary.kill();
    let killed = Instant::now();
    let mut statuses = std::collections::BTreeSet::new();
    let mut back = [None, None];
    while back.iter().any(Option::is_none) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not following the failover after 30 s: {statuses:?}"
        );
        for (i, gw) in [&a, &b].iter().enumerate() {
            let s = get(&c, &gw.url("/api"), &[]).await.status.as_u16();
            statuses.insert(s);
            if s == 200 && back[i].is_none() && killed.elapsed() > Duration::from_millis(50) {
                back[i] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    statuses.remove(&200);
    assert!(
        statuses.iter().all(|s| *s == 503),
        "between, only the configured failure answer: {statuses:?}"
    );
    let promoted = replica.info("replication").await.unwrap_or_default();
    assert!(
        promoted.contains("role:master"),
        "the replica was promoted: {promoted}"
    );
    println!(
        "sentinel failover followed after {:?} (gateway a) and {:?} (gateway b); refused in between with {statuses:?}",
        back[0].unwrap(),
        back[1].unwrap()
    );
    // The count carried over (it was replicated): still shared, still going down.
    let after = remaining(&get(&c, &a.url("/api"), &[]).await);
    assert_ne!(before, after);
}
