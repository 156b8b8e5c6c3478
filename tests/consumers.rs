//! Consumers and plans against a real Redis: API keys issued and revoked in Redis on a running
//! gateway, the negative cache bounding lookups of unknown keys, per-plan limits and a plan
//! change taking effect within the cache TTL, a JWT mapped to its consumer by a claim, a daily
//! quota shared exactly by three gateway processes (and within its bound with a flush
//! interval), the month boundary in a time zone, `/admin/consumers/<id>`, and Redis stopped.

mod support;

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use support::*;

const PREFIX: &str = "pc:";

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A gateway config: one route `/api` behind `auth`, applying the plans.
fn config(up: &Upstream, redis: &RedisServer, extra: &str, auth: &str) -> String {
    config_with(
        up,
        &format!("{{ url: \"{}\", timeout_ms: 200 }}", redis.url()),
        extra,
        auth,
    )
}

/// As `config`, with the `redis` section's value.
fn config_with(up: &Upstream, redis: &str, extra: &str, auth: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "{{LISTEN}}" }}]
admin: {{ address: "{{ADMIN}}" }}
redis: {redis}
consumer_store:
  key_prefix: "{PREFIX}"
  cache_ttl_ms: 300
  negative_ttl_ms: 300
auth:
  api_keys:
    - {{ name: keys, consumer_store: true }}
  jwt:
    - {{ name: tokens, secret: "0123456789abcdef0123456789abcdef", algorithms: [HS256], consumer_claim: consumer }}
defaults: {{ plan: free }}
plans:
  - name: free
    limits: [{{ name: per-second, algorithm: token_bucket, capacity: 5, refill_per_second: 0.01 }}]
  - name: pro
    limits: [{{ name: per-second, algorithm: token_bucket, capacity: 50, refill_per_second: 0.01 }}]
{extra}upstreams:
  - {{ name: up, targets: [{{ address: "{up}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    upstream: up
    auth: {auth}
    rate_limits: [{{ by_plan: true }}]
"#,
        up = up.addr,
    )
}

fn local(yaml: &str) -> String {
    yaml.replace("{LISTEN}", "127.0.0.1:0")
        .replace("{ADMIN}", "127.0.0.1:0")
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The upstream, a Redis server and a connection to it.
async fn start() -> (Upstream, RedisServer, redis::aio::MultiplexedConnection) {
    let up = Upstream::start("up").await;
    let redis = RedisServer::start().await;
    let conn = redis_conn(&redis).await;
    (up, redis, conn)
}

async fn hset(c: &mut redis::aio::MultiplexedConnection, key: &str, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: i64 = cmd.query_async(c).await.unwrap();
}

/// Changes a consumer's record in Redis and waits past the cache TTL (300 ms), so the next
/// request reads it again.
async fn update_consumer(
    c: &mut redis::aio::MultiplexedConnection,
    id: &str,
    fields: &[(&str, &str)],
) {
    hset(c, &format!("{PREFIX}consumer:{id}"), fields).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
}

async fn issue(c: &mut redis::aio::MultiplexedConnection, consumer: &str, plan: &str, key: &str) {
    hset(
        c,
        &format!("{PREFIX}consumer:{consumer}"),
        &[("tenant", "acme"), ("plan", plan), ("scopes", "read")],
    )
    .await;
    hset(
        c,
        &format!("{PREFIX}apikey:{}", sha(key)),
        &[("consumer", consumer), ("id", &format!("{consumer}-key"))],
    )
    .await;
}

async fn with_key(c: &HttpClient, url: &str, key: &str) -> Reply {
    get(c, url, &[("x-api-key", key)]).await
}

/// Sequential requests with one key: (200s, 429s); anything else fails the test.
async fn burst(c: &HttpClient, url: &str, key: &str, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match with_key(c, url, key).await.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

/// One counter of the gateway's `/metrics` (the sample whose line starts with `series`).
async fn metric(c: &HttpClient, admin: std::net::SocketAddr, series: &str) -> f64 {
    let text = get(c, &format!("http://{admin}/metrics"), &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test]
async fn a_key_issued_in_redis_works_without_a_reload_and_stops_within_the_ttl_once_revoked() {
    let (up, redis, mut conn) = start().await;
    let gw = TestGateway::start(&local(&config(&up, &redis, "", "{ api_key: keys }"))).await;
    let c = client();
    let url = gw.url("/api/x");
    let unknown = with_key(&c, &url, "k-alice").await;
    unknown.assert_gateway_error(401);

    // On pro (50 requests in its bucket), so polling never meets the limit.
    issue(&mut conn, "alice", "pro", "k-alice").await;
    let issued = Instant::now();
    let mut first_ok = None;
    while issued.elapsed() < Duration::from_secs(3) {
        if with_key(&c, &url, "k-alice").await.status == 200 {
            first_ok = Some(issued.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_ok = first_ok.expect("an issued key never worked");
    // The unknown key was remembered for at most the negative TTL (300 ms).
    assert!(first_ok <= Duration::from_millis(600), "{first_ok:?}");
    // The upstream saw the request without the key.
    assert!(up.last().headers.get("x-api-key").is_none());

    // A suspended consumer is refused with 403 once its record is read again.
    update_consumer(&mut conn, "alice", &[("status", "suspended")]).await;
    with_key(&c, &url, "k-alice")
        .await
        .assert_gateway_error(403);
    update_consumer(&mut conn, "alice", &[("status", "active")]).await;
    assert_eq!(with_key(&c, &url, "k-alice").await.status, 200);

    // Revoked: refused within the cache TTL (300 ms), and not before the entry expires.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{PREFIX}apikey:{}", sha("k-alice")))
        .query_async(&mut conn)
        .await
        .unwrap();
    let revoked = Instant::now();
    let mut refused = None;
    while revoked.elapsed() < Duration::from_secs(3) {
        let r = with_key(&c, &url, "k-alice").await;
        if r.status == 401 {
            r.assert_gateway_error(401);
            refused = Some(revoked.elapsed());
            break;
        }
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused = refused.expect("a revoked key kept working");
    assert!(refused <= Duration::from_millis(600), "{refused:?}");
    // A key marked revoked (rather than deleted) is refused too.
    issue(&mut conn, "alice", "pro", "k-alice").await;
    hset(
        &mut conn,
        &format!("{PREFIX}apikey:{}", sha("k-alice")),
        &[("status", "revoked")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    with_key(&c, &url, "k-alice")
        .await
        .assert_gateway_error(401);
}

#[tokio::test]
async fn ten_thousand_requests_with_unknown_keys_make_one_lookup_per_key_per_negative_ttl() {
    let (up, redis, mut conn) = start().await;
    let yaml = local(&config(&up, &redis, "", "{ api_key: keys }"))
        .replace("negative_ttl_ms: 300", "negative_ttl_ms: 60000");
    let gw = TestGateway::start(&yaml).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    // 10 unknown keys, 1,000 requests each, 20 concurrent clients.
    let mut tasks = Vec::new();
    for t in 0..20 {
        let url = gw.url("/api/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in 0..500 {
                let key = format!("unknown-{}", (i + t) % 10);
                assert_eq!(with_key(&c, &url, &key).await.status, 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = client();
    let lookups = metric(
        &c,
        gw.admin,
        "portcullis_consumer_store_lookups_total{result=\"unknown\"}",
    )
    .await;
    assert_eq!(lookups, 10.0, "one lookup per unknown key");
    // What Redis itself ran: the lookup script (EVALSHA, and EVAL the first time).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    // Each lookup script reads the key's hash once (HGETALL, also counted when run inside a
    // script); EVALSHA/EVAL counts include NOSCRIPT retries, so they are not the measure.
    let reads = calls("hgetall");
    assert_eq!(
        reads, 10,
        "Redis read {reads} key records for 10 unknown keys\n{info}"
    );
}

#[tokio::test]
async fn plans_give_each_consumer_its_limits_and_a_plan_change_applies_within_the_ttl() {
    let (up, redis, mut conn) = start().await;
    issue(&mut conn, "alice", "free", "k-alice").await;
    issue(&mut conn, "bob", "pro", "k-bob").await;
    let gw = TestGateway::start(&local(&config(&up, &redis, "", "{ api_key: keys }"))).await;
    let c = client();
    let url = gw.url("/api/x");
    let first = with_key(&c, &url, "k-alice").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["ratelimit-policy"],
        "\"free/per-second\";q=5;w=500"
    );
    assert_eq!(burst(&c, &url, "k-alice", 9).await, (4, 5));
    let refused = with_key(&c, &url, "k-alice").await;
    refused.assert_gateway_error(429);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(burst(&c, &url, "k-bob", 60).await, (50, 10));

    // alice moves to pro in Redis: her next record read (within the TTL) brings pro's
    // limits, counted in pro's own bucket.
    update_consumer(&mut conn, "alice", &[("plan", "pro")]).await;
    let moved = with_key(&c, &url, "k-alice").await;
    assert_eq!(moved.status, 200);
    assert_eq!(
        moved.headers["ratelimit-policy"],
        "\"pro/per-second\";q=50;w=5000"
    );
    assert_eq!(burst(&c, &url, "k-alice", 55).await, (49, 6));
    // A plan the config does not define falls back to defaults.plan (free, whose bucket
    // alice already emptied).
    update_consumer(&mut conn, "alice", &[("plan", "platinum")]).await;
    with_key(&c, &url, "k-alice")
        .await
        .assert_gateway_error(429);
    let text = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        text.contains("portcullis_plan_requests_total{plan=\"pro\"}"),
        "{text}"
    );
    assert!(
        !text.contains("alice"),
        "a consumer id became a metric label"
    );
}

/// free is 5 requests/s and pro 50/s (token buckets of one second's worth): two consumers
/// sending as fast as they can at once for about two seconds each get their own rate.
#[tokio::test]
async fn free_at_5_per_second_and_pro_at_50_per_second_side_by_side() {
    let (up, redis, mut conn) = start().await;
    issue(&mut conn, "alice", "free", "k-alice").await;
    issue(&mut conn, "bob", "pro", "k-bob").await;
    let yaml = local(&config(&up, &redis, "", "{ api_key: keys }"))
        .replace(
            "capacity: 5, refill_per_second: 0.01",
            "capacity: 5, refill_per_second: 5",
        )
        .replace(
            "capacity: 50, refill_per_second: 0.01",
            "capacity: 50, refill_per_second: 50",
        );
    let gw = TestGateway::start(&yaml).await;
    let mut tasks = Vec::new();
    for key in ["k-alice", "k-bob"] {
        let url = gw.url("/api/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let start = Instant::now();
            let mut ok = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                match with_key(&c, &url, key).await.status.as_u16() {
                    200 => ok += 1,
                    429 => tokio::time::sleep(Duration::from_millis(2)).await,
                    s => panic!("unexpected {s}"),
                }
            }
            (ok, start.elapsed().as_secs_f64())
        }));
    }
    let (alice, a_secs) = tasks.remove(0).await.unwrap();
    let (bob, b_secs) = tasks.remove(0).await.unwrap();
    // Capacity, then the refill rate over the run (one token of slack for its last fraction).
    let want = |capacity: f64, rate: f64, secs: f64| capacity + rate * secs;
    let (a_want, b_want) = (want(5.0, 5.0, a_secs), want(50.0, 50.0, b_secs));
    assert!(
        (alice as f64) <= a_want + 1.0 && (alice as f64) >= a_want - 2.0,
        "alice (free): {alice} in {a_secs:.2} s, want ~{a_want:.0}"
    );
    assert!(
        (bob as f64) <= b_want + 1.0 && (bob as f64) >= b_want - 5.0,
        "bob (pro): {bob} in {b_secs:.2} s, want ~{b_want:.0}"
    );
}

#[tokio::test]
async fn a_jwt_maps_to_its_consumer_by_a_claim_and_gets_that_consumers_plan() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let (up, redis, mut conn) = start().await;
    issue(&mut conn, "bob", "pro", "k-bob").await;
    let extra = "consumers:\n  - { id: carol, tenant: initech, plan: free }\n";
    let gw = TestGateway::start(&local(&config(&up, &redis, extra, "{ jwt: tokens }"))).await;
    let c = client();
    let url = gw.url("/api/x");
    let token = |consumer: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        encode(
            &Header::default(),
            &serde_json::json!({ "sub": "user-1", "consumer": consumer, "exp": exp }),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap()
    };
    let call = |t: String| {
        let c = c.clone();
        let url = url.clone();
        async move { get(&c, &url, &[("authorization", &format!("Bearer {t}"))]).await }
    };
    // bob (from Redis) is on pro; carol (from the file) on free; an unknown consumer gets the
    // default plan.
    let r = call(token("bob")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["ratelimit-policy"],
        "\"pro/per-second\";q=50;w=5000"
    );
    let r = call(token("carol")).await;
    assert_eq!(
        r.headers["ratelimit-policy"],
        "\"free/per-second\";q=5;w=500"
    );
    // A consumer nobody defined: the default plan, whose limits count per consumer, so none
    // applies (README: limits keyed by `consumer` skip requests without one).
    let r = call(token("nobody")).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("ratelimit-policy"));
    // carol's limit is hers: the unknown consumer's requests did not count against it.
    let mut ok = 1;
    for _ in 0..6 {
        if call(token("carol")).await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
}

/// Sleeps past the next UTC midnight if it is less than `margin` away (a daily quota's window
/// must not roll over mid-test).
async fn clear_of_midnight(margin: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let left = 86_400.0 - now % 86_400.0;
    if left < margin.as_secs_f64() {
        tokio::time::sleep(Duration::from_secs_f64(left + 1.0)).await;
    }
}

fn seconds_to_utc_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

/// Three gateway processes, one daily quota of 1,000: `clients` concurrent clients send 1,200
/// requests round-robin. Returns (admitted, refusals' Retry-After values).
async fn quota_run(
    flush_ms: u64,
    pace: Duration,
) -> (usize, Vec<u64>, serde_json::Value, Duration) {
    let up = Upstream::start("up").await;
    let redis = RedisServer::start().await;
    let extra = "consumers:\n  - { id: dave, plan: gold }\n";
    let yaml = config(&up, &redis, extra, "{ api_key: keys }")
        .replace(
            "    - { name: keys, consumer_store: true }",
            &format!("    - {{ name: keys, consumer_store: true, keys: [{{ id: dave-key, sha256: \"{}\", consumer: dave }}] }}", sha("k-dave")),
        )
        .replace(
            "plans:\n",
            &format!("plans:\n  - name: gold\n    quotas: [{{ name: daily, limit: 1000, period: day, time_zone: UTC, flush_interval_ms: {flush_ms} }}]\n"),
        );
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(GatewayProcess::spawn(&yaml, 1).await);
    }
    clear_of_midnight(Duration::from_secs(30)).await;
    let addrs: Vec<_> = gws.iter().map(|g| g.addr).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..6 {
        let addrs = addrs.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut retry) = (0, Vec::<u64>::new());
            for i in 0..200 {
                let addr = addrs[(i + t) % 3];
                let r = with_key(&c, &format!("http://{addr}/api/x"), "k-dave").await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => {
                        r.assert_gateway_error(429);
                        let policy = r.headers["ratelimit-policy"].to_str().unwrap();
                        assert_eq!(policy, "\"gold/daily\";q=1000;w=86400");
                        retry.push(r.headers["retry-after"].to_str().unwrap().parse().unwrap());
                    }
                    s => panic!("unexpected {s}"),
                }
                tokio::time::sleep(pace).await;
            }
            (ok, retry)
        }));
    }
    let (mut admitted, mut retry) = (0, Vec::new());
    for t in tasks {
        let (ok, r) = t.await.unwrap();
        admitted += ok;
        retry.extend(r);
    }
    let took = started.elapsed();
    // Let a flush interval pass so every instance has added its count.
    tokio::time::sleep(Duration::from_millis(flush_ms * 3 + 100)).await;
    let c = client();
    let doc = get(
        &c,
        &format!("http://{}/admin/consumers/dave", gws[0].admin),
        &[],
    )
    .await
    .json();
    (admitted, retry, doc, took)
}

#[tokio::test]
async fn a_daily_quota_across_three_gateways_admits_exactly_its_limit() {
    let _alone = ALONE.lock().await;
    let (admitted, retry, doc, _) = quota_run(0, Duration::ZERO).await;
    assert_eq!(admitted, 1000);
    assert_eq!(retry.len(), 200);
    // Retry-After: the end of the UTC day.
    let want = seconds_to_utc_midnight();
    assert!(
        retry.iter().all(|r| r.abs_diff(want) <= 5),
        "Retry-After {:?} vs {want} s to midnight",
        &retry[..3]
    );
    let q = &doc["quotas"][0];
    assert_eq!(doc["effective_plan"], "gold");
    assert_eq!(doc["source"], "config");
    assert_eq!(q["name"], "gold/daily");
    assert_eq!(q["used"], 1000);
    assert_eq!(q["remaining"], 0);
    assert_eq!(q["period"], "day");
    assert!(
        q["window_end"].as_str().unwrap().ends_with("T00:00:00Z"),
        "{q}"
    );
}

/// With a flush interval, each instance admits against the fleet's count as of its last flush:
/// the overrun is bounded by what the other instances admit in two intervals (README):
/// (instances − 1) × (requests per second per instance) × 2 × interval.
#[tokio::test]
async fn a_batched_daily_quota_stays_within_its_documented_overrun() {
    let _alone = ALONE.lock().await;
    // Paced so the 1,200 requests span many 200 ms intervals.
    let (admitted, _, doc, took) = quota_run(200, Duration::from_millis(8)).await;
    let per_instance = 1200.0 / took.as_secs_f64() / 3.0;
    let bound = (2.0 * per_instance * 2.0 * 0.2).ceil() as usize;
    eprintln!(
        "batched quota (flush 200 ms, 3 gateways, {per_instance:.0} req/s each over {took:?}): {admitted} admitted for a limit of 1000, bound {bound}"
    );
    assert!(admitted >= 1000, "{admitted}: fewer than the limit");
    assert!(
        admitted <= 1000 + bound,
        "{admitted}: beyond the documented bound 1000 + {bound}"
    );
    // Once flushed, this instance's view holds at least the limit and at most what the fleet
    // admitted.
    let used = doc["quotas"][0]["used"].as_u64().unwrap();
    assert!(
        (1000..=admitted as u64).contains(&used),
        "{used} vs {admitted}: {doc}"
    );
}

#[tokio::test]
async fn the_month_boundary_in_the_quota_time_zone_starts_a_new_window() {
    use portcullis::ratelimit::redis::decide_quota_at;
    let redis = RedisServer::start().await;
    let up = Upstream::start("up").await;
    let yaml = local(&config(&up, &redis, "", "{ api_key: keys }")).replace(
        "plans:\n",
        "plans:\n  - name: monthly\n    quotas: [{ name: calls, limit: 3, period: month, time_zone: Pacific/Auckland }]\n",
    );
    let compiled = portcullis::compile::text(&yaml, "t.yaml").unwrap();
    let store = portcullis::redis_store::RedisStore::new(compiled.redis.as_ref().unwrap());
    let quota = &compiled.plans.plans[0].limits[0];
    assert_eq!(quota.name, "monthly/calls");
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_microsecond() as u64;
    // 23:59 on 31 January in Auckland (UTC+13) is 10:59 UTC.
    let before = at("2027-01-31T10:59:00Z");
    let after = at("2027-01-31T11:00:00Z");
    let key = "portcullis:test:monthly:dave";
    let mut admitted = 0;
    for _ in 0..4 {
        let (o, _) = decide_quota_at(&store, &quota.algorithm, key, before)
            .await
            .unwrap();
        if o.allowed {
            admitted += 1;
        } else {
            // Retry when February starts in Auckland: 60 s later.
            assert_eq!(o.reset_s, 60);
        }
    }
    assert_eq!(admitted, 3);
    // One minute later it is February in Auckland (still January in UTC): a new window.
    let (o, key_after) = decide_quota_at(&store, &quota.algorithm, key, after)
        .await
        .unwrap();
    assert!(o.allowed);
    assert_eq!(o.remaining, 2);
    assert!(
        key_after.ends_with(&format!(":{}", after / 1_000_000)),
        "{key_after}"
    );
    // The January window stays exhausted.
    let (o, _) = decide_quota_at(&store, &quota.algorithm, key, before)
        .await
        .unwrap();
    assert!(!o.allowed);
}

#[tokio::test]
async fn with_redis_stopped_cached_consumers_are_served_and_the_rest_get_the_documented_answer() {
    let _alone = ALONE.lock().await;
    let (up, mut redis, mut conn) = start().await;
    issue(&mut conn, "alice", "pro", "k-alice").await;
    let yaml = local(&config(&up, &redis, "", "{ api_key: keys }"));
    let unavailable = TestGateway::start(&yaml).await;
    let unauthorized = TestGateway::start(&yaml.replace(
        "negative_ttl_ms: 300",
        "negative_ttl_ms: 300\n  on_store_failure: unauthorized",
    ))
    .await;
    let c = client();
    for gw in [&unavailable, &unauthorized] {
        assert_eq!(with_key(&c, &gw.url("/api/x"), "k-alice").await.status, 200);
    }
    redis.kill();
    // Past the cache TTL: the record is stale, Redis cannot be read, the stale record serves.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for gw in [&unavailable, &unauthorized] {
        for _ in 0..5 {
            assert_eq!(with_key(&c, &gw.url("/api/x"), "k-alice").await.status, 200);
        }
        let stale = metric(
            &c,
            gw.admin,
            "portcullis_consumer_cache_total{result=\"stale\"}",
        )
        .await;
        assert!(stale >= 5.0, "{stale}");
    }
    with_key(&c, &unavailable.url("/api/x"), "k-new")
        .await
        .assert_gateway_error(503);
    let r = with_key(&c, &unauthorized.url("/api/x"), "k-new").await;
    r.assert_gateway_error(401);
    assert!(r.headers.contains_key("www-authenticate"));
}

/// The consumer store on a Redis Cluster: the key's record and its consumer live in different
/// slots, so they are read one after the other; the consumer's plan applies, and an unknown
/// key is still refused.
#[tokio::test]
async fn a_key_and_its_consumer_on_a_redis_cluster() {
    let up = Upstream::start("up").await;
    let nodes = RedisServer::start_cluster().await;
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port))
        .collect();
    let cluster = redis::cluster::ClusterClient::new(
        nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut c = cluster.get_async_connection().await.unwrap();
    let hset = |key: String, fields: Vec<(&'static str, String)>| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    };
    let consumer = hset(
        format!("{PREFIX}consumer:globex"),
        vec![("tenant", "globex".into()), ("plan", "pro".into())],
    );
    let key = hset(
        format!("{PREFIX}apikey:{}", sha("cluster-key")),
        vec![("consumer", "globex".into()), ("id", "globex-key".into())],
    );
    let _: i64 = consumer.query_async(&mut c).await.unwrap();
    let _: i64 = key.query_async(&mut c).await.unwrap();

    let yaml = local(&config_with(
        &up,
        &format!(
            "{{ url: \"redis://127.0.0.1/0\", timeout_ms: 300, cluster: {{ nodes: [{}] }} }}",
            list.join(", ")
        ),
        "",
        "{ api_key: keys }",
    ));
    let gw = TestGateway::start(&yaml).await;
    let h = client();
    let r = with_key(&h, &gw.url("/api"), "cluster-key").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let policy = r.headers["ratelimit-policy"].to_str().unwrap().to_string();
    assert!(
        policy.contains("pro/per-second"),
        "the consumer's plan: {policy}"
    );
    with_key(&h, &gw.url("/api"), "no-such-key")
        .await
        .assert_gateway_error(401);
}
