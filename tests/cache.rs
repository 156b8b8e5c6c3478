//! The response cache end to end: a real origin behind the gateway, real sockets. Each test
//! states the origin's caching headers in the query it requests (see `support::Origin`). Some
//! measure latency (coalescing, stale-while-revalidate), so the tests run one at a time
//! (`support::ALONE`).

mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use std::time::Duration;
use support::*;

/// One route `/c` caching with `route_cache`, on a public route.
fn config(origin: &Origin, route_cache: &str, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: origin, targets: [{{ address: \"{}\" }}] }}\n{extra}routes:\n  - name: cached\n    match: {{ path: {{ prefix: /c }} }}\n    upstream: origin\n    cache: {route_cache}\n  - name: plain\n    match: {{ path: {{ prefix: / }} }}\n    upstream: origin\n",
        origin.addr
    )
}

fn n(r: &Reply) -> u64 {
    r.json()["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n in {:?}", r.body))
}

fn cache_status(r: &Reply) -> String {
    r.headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_fresh_entry_answers_without_the_upstream_with_age_and_cache_status() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let url = gw.url("/c/a?cc=max-age=60");
    let first = get(&c, &url, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        cache_status(&first),
        "portcullis; fwd=uri-miss; fwd-status=200; stored"
    );
    // The fill is stored when its body ends, just after the client has it.
    wait_until("the entry is stored", Duration::from_secs(5), || {
        gw.gateway.snapshot().cache.stores[0].usage().entries == 1
    })
    .await;
    let second = get(&c, &url, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(n(&second), n(&first), "served from the cache");
    assert_eq!(origin.count(), 1);
    let status = cache_status(&second);
    assert!(status.starts_with("portcullis; hit; ttl="), "{status}");
    let ttl: i64 = status.rsplit('=').next().unwrap().parse().unwrap();
    assert!((50..=60).contains(&ttl), "{status}");
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers["content-type"], "application/json");
    // The plain route has no cache: no Cache-Status, every request upstream.
    let plain = get(&c, &gw.url("/p?cc=max-age=60"), &[]).await;
    assert!(plain.headers.get("cache-status").is_none());
    get(&c, &gw.url("/p?cc=max-age=60"), &[]).await;
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn age_counts_the_upstreams_age_and_the_time_in_the_cache() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let url = gw.url("/c/age?cc=max-age=100&age=30");
    get(&c, &url, &[]).await;
    wait_until("stored", Duration::from_secs(5), || {
        gw.gateway.snapshot().cache.stores[0].usage().entries == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&c, &url, &[]).await;
    let age: u64 = r.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(
        (32..=33).contains(&age),
        "Age {age}: 30 from upstream + 2 s resident"
    );
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn what_is_never_stored_is_never_served_from_the_cache() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    for (query, why) in [
        ("cc=private,max-age=60", "private"),
        ("cc=no-store,max-age=60", "no-store"),
        ("cc=max-age=60&cookie=1", "set-cookie"),
        ("cc=max-age=60&vary=*", "vary star"),
        (
            "status=500&cc=max-age=60",
            "status 500 is not understood as storable",
        ),
        ("status=302", "302 without explicit freshness"),
    ] {
        let url = gw.url(&format!("/c/never?{query}"));
        let before = origin.count();
        for _ in 0..3 {
            let r = get(&c, &url, &[]).await;
            assert!(
                !cache_status(&r).contains("hit"),
                "{why}: {}",
                cache_status(&r)
            );
        }
        assert_eq!(
            origin.count() - before,
            3,
            "{why}: every request went upstream"
        );
    }
    // Request no-store: the answer is not stored.
    let url = gw.url("/c/req-no-store?cc=max-age=60");
    get(&c, &url, &[("cache-control", "no-store")]).await;
    get(&c, &url, &[("cache-control", "no-store")]).await;
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 0);
    // A POST is never answered from the cache (and bypasses it by method).
    let r = send(
        &c,
        Request::post(gw.url("/c/a?cc=max-age=60"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(cache_status(&r), "portcullis; fwd=method; fwd-status=200");
}

#[tokio::test]
async fn the_routes_ttl_applies_only_when_the_upstream_says_nothing() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60, max_ttl_s: 120 }", "")).await;
    let c = client();
    // No freshness from the upstream: the route's ttl_s.
    let r = fill_then_hit(&gw, &c, "/c/ttl").await;
    let ttl = status_ttl(&r);
    assert!((55..=60).contains(&ttl), "{ttl}");
    // The upstream's max-age wins over ttl_s, and max_ttl_s caps it.
    let r = fill_then_hit(&gw, &c, "/c/ttl?cc=max-age=10").await;
    assert!((9..=10).contains(&status_ttl(&r)));
    let r = fill_then_hit(&gw, &c, "/c/ttl?cc=max-age=9999").await;
    assert!((114..=120).contains(&status_ttl(&r)), "{}", status_ttl(&r));
    // s-maxage before max-age in a shared cache; Expires when neither.
    let r = fill_then_hit(&gw, &c, "/c/ttl?cc=max-age=5,s-maxage=40").await;
    assert!((38..=40).contains(&status_ttl(&r)));
    let r = fill_then_hit(&gw, &c, "/c/ttl?expires=30").await;
    // Expires and Date are whole seconds taken a moment apart: 29–31 s, less the jitter.
    assert!((27..=31).contains(&status_ttl(&r)), "{}", status_ttl(&r));
    // An invalid Expires means already expired: stored stale, never a hit.
    let url = gw.url("/c/ttl?expires=0");
    get(&c, &url, &[]).await;
    let r = get(&c, &url, &[]).await;
    assert!(!cache_status(&r).contains("hit"), "{}", cache_status(&r));
}

async fn fill_then_hit(gw: &TestGateway, c: &HttpClient, path: &str) -> Reply {
    let url = gw.url(path);
    let before = gw.gateway.snapshot().cache.stores[0].usage().entries;
    get(c, &url, &[]).await;
    wait_until("stored", Duration::from_secs(5), || {
        gw.gateway.snapshot().cache.stores[0].usage().entries > before
    })
    .await;
    let r = get(c, &url, &[]).await;
    assert!(
        cache_status(&r).contains("; hit"),
        "{path}: {}",
        cache_status(&r)
    );
    r
}

fn status_ttl(r: &Reply) -> i64 {
    let s = cache_status(r);
    s.split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {s}"))
        .parse()
        .unwrap()
}

async fn stored(gw: &TestGateway, entries: usize) {
    wait_until("stored", Duration::from_secs(5), || {
        gw.gateway.snapshot().cache.stores[0].usage().entries >= entries
    })
    .await;
}

#[tokio::test]
async fn vary_selects_the_variant_and_vary_star_never_matches() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(
        &origin,
        "{ ttl_s: 60, vary: [accept-language] }",
        "",
    ))
    .await;
    let c = client();
    // The upstream varies on Accept-Encoding; the route adds Accept-Language.
    let url = gw.url("/c/v?cc=max-age=60&vary=Accept-Encoding");
    let en_gzip = get(
        &c,
        &url,
        &[("accept-language", "en"), ("accept-encoding", "gzip")],
    )
    .await;
    stored(&gw, 1).await;
    let fr_gzip = get(
        &c,
        &url,
        &[("accept-language", "fr"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(
        cache_status(&fr_gzip),
        "portcullis; fwd=vary-miss; fwd-status=200; stored"
    );
    stored(&gw, 2).await;
    let en_br = get(
        &c,
        &url,
        &[("accept-language", "en"), ("accept-encoding", "br")],
    )
    .await;
    assert!(!cache_status(&en_br).contains("hit"));
    stored(&gw, 3).await;
    // Each variant answers its own requests, normalized (case, spacing).
    let again = get(
        &c,
        &url,
        &[("accept-language", "EN"), ("accept-encoding", " gzip")],
    )
    .await;
    assert!(
        cache_status(&again).contains("hit"),
        "{}",
        cache_status(&again)
    );
    assert_eq!(n(&again), n(&en_gzip));
    assert_eq!(again.json()["lang"], "en");
    let again = get(
        &c,
        &url,
        &[("accept-language", "fr"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(n(&again), n(&fr_gzip));
    assert_eq!(origin.count(), 3);
    // The route's vary is announced to downstream caches too.
    assert!(vary_tokens(&again.headers).contains(&"accept-language".to_string()));
    // Vary: * is never stored.
    let star = gw.url("/c/v?cc=max-age=60&vary=*");
    get(&c, &star, &[]).await;
    let r = get(&c, &star, &[]).await;
    assert!(!cache_status(&r).contains("hit"));
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_freshens_it() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let url = gw.url("/c/r?cc=max-age=1&etag=v1");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&c, &url, &[]).await;
    // The upstream saw the cache's validator; the client got 200 with the stored body.
    assert_eq!(origin.last_headers()["if-none-match"], "\"v1\"");
    assert_eq!(r.status, 200);
    assert_eq!(n(&r), n(&first), "the stored body, freshened");
    assert!(cache_status(&r).starts_with("portcullis; fwd=stale; fwd-status=304; ttl="));
    assert_eq!(
        gw.gateway.snapshot().routes[0]
            .metrics
            .cache
            .revalidated
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Fresh again: a hit.
    let r = get(&c, &url, &[]).await;
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert_eq!(origin.count(), 2);
    // Last-Modified validates too.
    let url = gw.url("/c/r?cc=max-age=1&lm=100");
    get(&c, &url, &[]).await;
    stored(&gw, 2).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&c, &url, &[]).await;
    assert!(origin.last_headers().contains_key("if-modified-since"));
    assert_eq!(r.status, 200);
    assert!(cache_status(&r).starts_with("portcullis; fwd=stale; fwd-status=304"));
}

#[tokio::test]
async fn client_conditional_requests_get_304_from_the_cache() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let url = gw.url("/c/cond?cc=max-age=60&etag=abc");
    get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    let r = get(&c, &url, &[("if-none-match", "\"x\", W/\"abc\"")]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.headers["etag"], "\"abc\"");
    assert!(r.headers.contains_key("cache-control"));
    let r = get(&c, &url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
    // A miss does not pass the client's validator upstream: the cache answers it itself.
    let url = gw.url("/c/cond2?cc=max-age=60&etag=abc");
    let r = get(&c, &url, &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(r.status, 200);
    assert!(!origin.last_headers().contains_key("if-none-match"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_uri_and_its_location() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let url = gw.url("/c/item?cc=max-age=60");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    assert_eq!(n(&get(&c, &url, &[]).await), n(&first));
    // A failed POST invalidates nothing.
    let post = |u: String| {
        send(
            &c,
            Request::builder()
                .method(Method::POST)
                .uri(u)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
    };
    assert_eq!(
        post(gw.url("/c/item?cc=max-age=60&status=500"))
            .await
            .status,
        500
    );
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 1);
    // A successful one on the same URI does.
    assert_eq!(post(url.clone()).await.status, 200);
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 0);
    let after = get(&c, &url, &[]).await;
    assert_ne!(n(&after), n(&first));
    assert!(!cache_status(&after).contains("hit"));
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(
        &origin,
        "{ ttl_s: 60, stale_while_revalidate_s: 30 }",
        "",
    ))
    .await;
    let c = client();
    let url = gw.url("/c/swr?cc=max-age=1&delay_ms=300");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Five requests on the stale entry: all answered from it at once, one refresh upstream.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let r = get(&c, &url, &[]).await;
        assert_eq!(n(&r), n(&first));
        assert!(
            cache_status(&r).contains("hit; ttl=-"),
            "{}",
            cache_status(&r)
        );
        assert!(cache_status(&r).contains("detail=stale-while-revalidate"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "never waited on the upstream"
    );
    wait_until("the refreshed entry", Duration::from_secs(5), || {
        origin.count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.count(), 2, "one background refresh");
    let r = get(&c, &url, &[]).await;
    assert_eq!(n(&r), 2, "the refreshed body");
    assert!(cache_status(&r).contains("hit; ttl="));
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_when_the_upstream_fails_or_is_gone() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60, stale_if_error_s: 300 }", "")).await;
    let c = client();
    let url = gw.url("/c/sie?cc=max-age=1");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The upstream answers 503: the stale entry instead.
    origin
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(n(&r), n(&first));
    assert!(
        cache_status(&r).contains("fwd=stale; fwd-status=503"),
        "{}",
        cache_status(&r)
    );
    assert!(cache_status(&r).contains("detail=stale-if-error"));
    // must-revalidate forbids it: the client sees the 503.
    origin
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let strict = gw.url("/c/sie?cc=max-age=1,must-revalidate");
    get(&c, &strict, &[]).await;
    stored(&gw, 2).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(&c, &strict, &[]).await.status, 503);
    // The upstream gone altogether (connection refused): the stale entry still answers.
    origin.stop();
    drop(origin);
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(n(&r), n(&first));
}

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// An authenticated route `/c` (JWT, the subject forwarded as `x-user`) caching with `cache`.
fn authenticated(origin: &Origin, cache: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nauth:\n  jwt:\n    - name: users\n      secret: \"{SECRET}\"\n      algorithms: [HS256]\n      forward_claims: {{ sub: x-user }}\nupstreams:\n  - {{ name: origin, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: cached\n    match: {{ path: {{ prefix: /c }} }}\n    upstream: origin\n    auth: {{ jwt: users }}\n    cache: {cache}\n",
        origin.addr
    )
}

#[tokio::test]
async fn principals_never_receive_each_others_responses() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    // Stored per principal: max-age=60 alone (no public) on an authenticated route.
    let gw = TestGateway::start(&authenticated(
        &origin,
        "{ ttl_s: 60, per_principal: true }",
    ))
    .await;
    let c = client();
    let users = ["alice", "bob", "carol", "dave"];
    let tokens: Vec<String> = users
        .iter()
        .map(|u| format!("Bearer {}", token(u)))
        .collect();
    let url = gw.url("/c/me?cc=max-age=60");
    let mut hits = 0;
    for i in 0..1000 {
        let u = i % users.len();
        let r = get(&c, &url, &[("authorization", &tokens[u])]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["user"],
            users[u],
            "request {i} got another principal's body"
        );
        if cache_status(&r).contains("hit") {
            hits += 1;
        }
    }
    // One fill per principal (a request right after a fill may still miss while it stores).
    assert!(
        origin.count() <= 2 * users.len() as u64,
        "{}",
        origin.count()
    );
    assert!(hits >= 990, "{hits}");

    // Without per_principal, an authenticated response needs public, s-maxage or
    // must-revalidate (RFC 9111 §3.5) to be stored; with one it is still partitioned.
    let origin = Origin::start().await;
    let gw = TestGateway::start(&authenticated(&origin, "{ ttl_s: 60 }")).await;
    let url = gw.url("/c/me?cc=max-age=60");
    for _ in 0..3 {
        get(&c, &url, &[("authorization", &tokens[0])]).await;
    }
    assert_eq!(origin.count(), 3, "not stored without public");
    let url = gw.url("/c/me?cc=public,max-age=60");
    let a = get(&c, &url, &[("authorization", &tokens[0])]).await;
    stored(&gw, 1).await;
    let b = get(&c, &url, &[("authorization", &tokens[1])]).await;
    assert_eq!(a.json()["user"], "alice");
    assert_eq!(
        b.json()["user"],
        "bob",
        "public, yet still in the principal's partition"
    );
    let a2 = get(&c, &url, &[("authorization", &tokens[0])]).await;
    assert!(cache_status(&a2).contains("hit"));
    assert_eq!(a2.json()["user"], "alice");
    // A request without credentials is refused before the cache: nothing leaks to it.
    assert_eq!(get(&c, &url, &[]).await.status, 401);
}

#[tokio::test]
async fn a_thousand_concurrent_misses_make_one_upstream_request() {
    let _alone = ALONE.lock().await;
    raise_fd_limit(8192);
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    const CLIENTS: usize = 1000;
    const UPSTREAM_MS: u64 = 500;
    // Every client has its connection open (a request on the plain route) before the herd, so
    // what is measured is the wait on the fill, not connection setup.
    let url = gw.url(&format!("/c/herd?cc=max-age=60&delay_ms={UPSTREAM_MS}"));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, warm, barrier) = (url.clone(), gw.url("/warm"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            assert_eq!(get(&c, &warm, &[]).await.status, 200);
            barrier.wait().await;
            let t = std::time::Instant::now();
            let r = get(&c, &url, &[]).await;
            (r.status, n(&r), t.elapsed())
        }));
    }
    barrier.wait().await;
    let warmed = origin.count();
    let mut latencies = Vec::new();
    for t in tasks {
        let (status, n, took) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(n, warmed + 1, "every client got the one upstream answer");
        latencies.push(took);
    }
    assert_eq!(origin.count() - warmed, 1, "exactly one upstream request");
    latencies.sort();
    let p99 = latencies[CLIENTS * 99 / 100 - 1];
    let metrics = &gw.gateway.snapshot().routes[0].metrics.cache;
    let coalesced = metrics.coalesced.load(std::sync::atomic::Ordering::Relaxed);
    let hits = metrics.hits.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "coalesced {coalesced}, hits {hits}, p50 {:?}, p99 {p99:?}",
        latencies[CLIENTS / 2]
    );
    assert_eq!(
        coalesced + hits,
        CLIENTS as u64 - 1,
        "all but the leader waited or hit"
    );
    assert!(
        coalesced >= 900,
        "the herd arrived while the fill was under way: {coalesced}"
    );
    // Woken when the head arrives, not polled: the p99 stays near the upstream's latency.
    // (The loopback figure for a release build, against the 5 ms goal, is in bench/RESULTS.md;
    // this debug build on a shared 2-core machine gets a wider margin.)
    assert!(
        p99 < Duration::from_millis(UPSTREAM_MS + 250),
        "p99 {p99:?} for an upstream answering in {UPSTREAM_MS} ms"
    );
}

#[tokio::test]
async fn waiters_get_the_whole_body_when_the_first_requester_goes_away() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    // 256 KiB streamed over ~300 ms.
    let path = "/c/big?cc=max-age=60&size=262144&chunk_ms=20";
    // The first requester reads the head and a little, then disconnects.
    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    first
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", gw.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let got = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..got]).starts_with("HTTP/1.1 200"));
    // Waiters join the fill under way.
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let url = gw.url(path);
        waiters.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(first);
    for w in waiters {
        let r = w.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 262_144, "the whole body");
    }
    assert_eq!(origin.count(), 1);
    stored(&gw, 1).await;
    let r = get(&client(), &gw.url(path), &[]).await;
    assert!(cache_status(&r).contains("hit"));
    assert_eq!(r.body.len(), 262_144);
}

#[tokio::test]
async fn an_uncacheable_answer_sends_the_waiters_upstream_and_is_remembered() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let url = gw.url("/c/private?cc=private&delay_ms=200");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&client(), &url, &[]).await }));
    }
    let started = std::time::Instant::now();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // Waiters went upstream in parallel once told, not one after another.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.count(), 10);
    // Remembered as uncacheable: the next requests skip coalescing.
    let r = get(&client(), &url, &[]).await;
    assert!(
        cache_status(&r).contains("detail=uncacheable"),
        "{}",
        cache_status(&r)
    );
}

async fn purge(gw: &TestGateway, body: &str) -> Reply {
    send(
        &client(),
        Request::post(format!("http://{}/admin/cache/purge", gw.admin))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn purges_by_url_prefix_and_surrogate_key_soft_or_hard() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let host = format!("http://127.0.0.1:{}", gw.addr.port());
    // Two variants of one URL, another URL under the same prefix, one tagged.
    let varied = "/c/p/a?cc=max-age=60&vary=accept-language";
    get(&c, &gw.url(varied), &[("accept-language", "en")]).await;
    get(&c, &gw.url(varied), &[("accept-language", "fr")]).await;
    let tagged = get(&c, &gw.url("/c/p/b?cc=max-age=60&skey=product-7+all"), &[]).await;
    assert!(
        tagged.headers.get("surrogate-key").is_none(),
        "removed before the response leaves"
    );
    get(&c, &gw.url("/c/q?cc=max-age=60&etag=e1"), &[]).await;
    stored(&gw, 4).await;

    // url: every variant of that URL (the query in any order).
    let r = purge(
        &gw,
        &format!(r#"{{"url": "{host}/c/p/a?vary=accept-language&cc=max-age=60"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["purged"], 2);
    // surrogate_key.
    let r = purge(&gw, r#"{"surrogate_key": "product-7"}"#).await;
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 1);
    // soft: kept, but stale — the next request revalidates it.
    let r = purge(&gw, &format!(r#"{{"prefix": "{host}/c/", "soft": true}}"#)).await;
    assert_eq!(
        (r.json()["purged"].as_u64(), r.json()["soft"].as_bool()),
        (Some(1), Some(true))
    );
    let before = origin.count();
    let r = get(&c, &gw.url("/c/q?cc=max-age=60&etag=e1"), &[]).await;
    assert_eq!(origin.count(), before + 1);
    assert!(
        cache_status(&r).contains("fwd=stale; fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    // prefix, hard.
    let r = purge(&gw, &format!(r#"{{"prefix": "{host}/c/"}}"#)).await;
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 0);
    // Bad purge requests: 400 with the JSON error body.
    for bad in [
        r#"{}"#,
        r#"{"url": "/relative"}"#,
        "not json",
        r#"{"url": "http://h/", "prefix": "http://h/"}"#,
    ] {
        let r = purge(&gw, bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string() && r.json()["request_id"].is_string());
    }
}

#[tokio::test]
async fn the_admin_api_metrics_and_access_log_report_the_cache() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&config(
        &origin,
        "{ ttl_s: 60 }",
        &format!(
            "observability:\n  access_log: {{ destination: \"{}\" }}\n",
            log.display()
        ),
    ))
    .await;
    let c = client();
    let url = gw.url("/c/m?cc=max-age=60");
    get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    get(&c, &url, &[]).await;
    get(&c, &url, &[]).await;
    let doc = get(&c, &format!("http://{}/admin/cache", gw.admin), &[])
        .await
        .json();
    assert_eq!(doc["stores"][0]["entries"], 1);
    assert!(doc["stores"][0]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(doc["routes"][0]["route"], "cached");
    assert_eq!(doc["routes"][0]["hits"], 2);
    assert_eq!(doc["routes"][0]["misses"], 1);
    let ratio = doc["routes"][0]["hit_ratio"].as_f64().unwrap();
    assert!((ratio - 2.0 / 3.0).abs() < 1e-9, "{ratio}");
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    for line in [
        "portcullis_cache_hits_total{route=\"cached\"} 2",
        "portcullis_cache_misses_total{route=\"cached\"} 1",
        "portcullis_cache_stored_total{route=\"cached\"} 1",
        "portcullis_cache_entries{store=\"shared\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let mut text = String::new();
    wait_until("three log lines", Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 3
    })
    .await;
    let caches: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cache"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(caches, ["miss", "hit", "hit"]);
}

/// `/c` on `primary` with a fallback to `spare`; a breaker on the primary, and a retry budget
/// that allows one extra attempt per request.
fn with_fallback(primary: &str, spare: &Origin, route_extra: &str, breaker: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none, timeout_ms: 3000 }}\nupstreams:\n  - name: primary\n    targets: [{{ address: \"{primary}\" }}]\n    retry_budget: {{ percent: 100, min_retries_per_second: 1000 }}\n{breaker}  - {{ name: spare, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: cached\n    match: {{ path: {{ prefix: /c }} }}\n    upstream: primary\n    fallback: {{ upstream: spare, on: [5xx, connect_failure, timeout, breaker_open] }}\n{route_extra}",
        spare.addr
    )
}

#[tokio::test]
async fn the_fallback_answers_when_the_primary_fails_and_no_stale_entry_can() {
    let _alone = ALONE.lock().await;
    let primary = Origin::start().await;
    let spare = Origin::start().await;
    let gw = TestGateway::start(&with_fallback(
        &primary.addr.to_string(),
        &spare,
        "    retries: { attempts: 1, on: [\"503\", connect_failure] }\n    cache: { ttl_s: 60, stale_if_error_s: 60 }\n",
        "",
    ))
    .await;
    let c = client();
    // A stale entry exists for /c/s: stale-if-error answers before the fallback.
    let url = gw.url("/c/s?cc=max-age=1");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    primary
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = get(&c, &url, &[]).await;
    assert_eq!(
        (r.status.as_u16(), n(&r)),
        (200, n(&first)),
        "the stale entry"
    );
    assert_eq!(spare.count(), 0);
    // No entry: the fallback answers; the primary made at most its two attempts.
    for i in 0..10 {
        let (before, spare_before) = (primary.count(), spare.count());
        let r = get(&c, &gw.url(&format!("/c/none{i}?cc=max-age=60")), &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let attempts = primary.count() - before + spare.count() - spare_before;
        assert_eq!(spare.count() - spare_before, 1, "the fallback answered");
        assert!(
            attempts <= 3,
            "{attempts} upstream attempts: three at most in all"
        );
        // Retry and fallback both spend the primary's retry budget; let it refill.
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    assert_eq!(spare.count(), 10);
    // What the fallback answered is not stored in the primary's place.
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 1);
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("portcullis_route_fallbacks_total{route=\"cached\"} 10"),
        "{metrics}"
    );
    // A POST (with a body) is never sent to the fallback.
    let r = send(
        &c,
        Request::post(gw.url("/c/post"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(spare.count(), 10);
}

#[tokio::test]
async fn an_open_breaker_serves_stale_without_contacting_the_primary_then_the_fallback() {
    let _alone = ALONE.lock().await;
    let primary = Origin::start().await;
    let spare = Origin::start().await;
    let breaker =
        "    circuit_breaker: { consecutive_failures: 2, open_ms: 60000, half_open_requests: 1 }\n";
    let gw = TestGateway::start(&with_fallback(
        &primary.addr.to_string(),
        &spare,
        "    cache: { ttl_s: 60, stale_if_error_s: 60 }\n",
        breaker,
    ))
    .await;
    let c = client();
    let url = gw.url("/c/b?cc=max-age=1");
    let first = get(&c, &url, &[]).await;
    stored(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Two failures open the primary's breaker (answered by the fallback meanwhile).
    primary
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..2 {
        get(&c, &gw.url(&format!("/c/open{i}")), &[]).await;
    }
    let seen = primary.count();
    // Open: the stale entry answers, the primary is not contacted.
    let r = get(&c, &url, &[]).await;
    assert_eq!((r.status.as_u16(), n(&r)), (200, n(&first)));
    assert!(
        cache_status(&r).contains("detail=stale-if-error"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(
        primary.count(),
        seen,
        "the open breaker kept the request off the primary"
    );
    // Open and nothing stored: the fallback answers, still without the primary.
    let r = get(&c, &gw.url("/c/other"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(primary.count(), seen);
}

#[tokio::test]
async fn a_target_failing_most_requests_never_five_in_a_row_opens_a_failure_rate_breaker() {
    let _alone = ALONE.lock().await;
    let primary = Origin::start().await;
    let spare = Origin::start().await;
    let breaker = "    circuit_breaker:\n      consecutive_failures: 5\n      open_ms: 60000\n      half_open_requests: 1\n      failure_rate: { percent: 50, min_requests: 10, window_s: 10 }\n";
    let gw = TestGateway::start(&with_fallback(
        &primary.addr.to_string(),
        &spare,
        "",
        breaker,
    ))
    .await;
    let c = client();
    // 60% of requests fail, never more than two in a row.
    let pattern = [503, 200, 503, 200, 503];
    for i in 0..10 {
        let status = pattern[i % 5];
        get(&c, &gw.url(&format!("/c/r{i}?status={status}")), &[]).await;
    }
    let seen = primary.count();
    assert_eq!(seen, 10);
    for i in 0..5 {
        let r = get(&c, &gw.url(&format!("/c/after{i}")), &[]).await;
        assert_eq!(
            r.status, 200,
            "the fallback answers while the breaker is open"
        );
    }
    assert_eq!(primary.count(), seen, "open: the primary gets nothing");
    let ups = get(&c, &format!("http://{}/admin/upstreams", gw.admin), &[])
        .await
        .json();
    assert!(ups.to_string().contains("\"open\""), "{ups}");
}

/// A gateway on the shared tier of `redis`.
fn shared(origin: &Origin, redis: &RedisServer) -> String {
    shared_on(
        origin,
        &format!("url: \"{}\", timeout_ms: 200", redis.url()),
    )
}

/// A gateway on the shared tier of the `redis` section that `connection` describes.
fn shared_on(origin: &Origin, connection: &str) -> String {
    config(
        origin,
        "{ ttl_s: 60 }",
        &format!(
            "redis: {{ {connection}, breaker_failures: 3, breaker_open_ms: 500 }}\ncache: {{ store: redis }}\n"
        ),
    )
}

fn shared_metric(text: &str, result: &str) -> u64 {
    let prefix = format!("portcullis_cache_shared_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn two_gateways_share_entries_and_purges_through_redis() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start().await;
    let origin = Origin::start().await;
    let yaml = shared(&origin, &redis);
    share_entries_and_purges(&origin, &yaml, &[&redis]).await;
}

/// The same on a 3-master Redis Cluster: the tier's keys share one hash tag (one slot), so the
/// entry and its index sets are written together and purged together.
#[tokio::test]
async fn two_gateways_share_entries_and_purges_through_a_redis_cluster() {
    let _alone = ALONE.lock().await;
    let nodes = RedisServer::start_cluster().await;
    let origin = Origin::start().await;
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port))
        .collect();
    let yaml = shared_on(
        &origin,
        &format!(
            "url: \"redis://127.0.0.1/0\", timeout_ms: 300, cluster: {{ nodes: [{}] }}",
            list.join(", ")
        ),
    );
    let all: Vec<&RedisServer> = nodes.iter().collect();
    share_entries_and_purges(&origin, &yaml, &all).await;
}

/// Two gateways on `yaml`'s shared tier (stored on `nodes`): one fills, the other answers from
/// the shared copy, a purge on the first removes it everywhere.
async fn share_entries_and_purges(origin: &Origin, yaml: &str, nodes: &[&RedisServer]) {
    let a = TestGateway::start(yaml).await;
    let b = TestGateway::start(yaml).await;
    let c = client();
    // Both gateways see the same host, so their keys agree.
    let path = "/c/shared?cc=max-age=60&skey=s1";
    let via = |gw: &TestGateway| {
        let url = gw.url(path);
        let c = c.clone();
        let host = format!("127.0.0.1:{}", a.addr.port());
        async move {
            send(
                &c,
                Request::get(url)
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        }
    };
    let filled = via(&a).await;
    // The write to Redis happens after the fill, off the request path.
    // DBSIZE answers `:N`: the entry's hash and its URL and surrogate-key sets.
    let mut keys = 0;
    for _ in 0..250 {
        keys = 0;
        for node in nodes {
            let reply = node.command(&["DBSIZE"]).await.unwrap_or_default();
            keys += reply
                .trim_start_matches(':')
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
        if keys >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        keys, 3,
        "the shared copy and its two index sets were written"
    );
    let mut hit = via(&b).await;
    for _ in 0..50 {
        if cache_status(&hit).contains("hit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        hit = via(&b).await;
    }
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(n(&hit), n(&filled), "b answered with a's entry");
    assert_eq!(origin.count(), 1);
    // A purge on a removes it from a, from Redis, and (published) from b.
    let r = send(
        &client(),
        Request::post(format!("http://{}/admin/cache/purge", a.admin))
            .body(Full::new(Bytes::from_static(br#"{"surrogate_key": "s1"}"#)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["purged_shared"], 1);
    wait_until("b dropped its copy", Duration::from_secs(5), || {
        b.gateway.snapshot().cache.stores[0].usage().entries == 0
    })
    .await;
    assert_eq!(a.gateway.snapshot().cache.stores[0].usage().entries, 0);
    let after = via(&b).await;
    assert!(!cache_status(&after).contains("hit"));
    assert_eq!(origin.count(), 2);
    // That answer was stored again; a purge by URL prefix finds it in Redis (SCAN: on a
    // cluster, on the node of the tier's slot).
    let host = format!("127.0.0.1:{}", a.addr.port());
    let mut purged = 0;
    for _ in 0..100 {
        let r = purge(&a, &format!(r#"{{"prefix": "http://{host}/c/"}}"#)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        purged = r.json()["purged_shared"].as_u64().unwrap_or(0);
        if purged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(purged, 1, "the prefix purge found the shared copy");
}

#[tokio::test]
async fn redis_stopped_mid_run_means_misses_never_client_errors() {
    let _alone = ALONE.lock().await;
    let mut redis = RedisServer::start().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&shared(&origin, &redis)).await;
    let c = client();
    for i in 0..5 {
        assert_eq!(
            get(&c, &gw.url(&format!("/c/up{i}?cc=max-age=60")), &[])
                .await
                .status,
            200
        );
    }
    redis.kill();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = get(&c, &gw.url(&format!("/c/down{i}?cc=max-age=60")), &[]).await;
        statuses.push(r.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // In-process entries still answer while Redis is down.
    let r = get(&c, &gw.url("/c/up0?cc=max-age=60"), &[]).await;
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(shared_metric(&metrics, "error") >= 3, "{metrics}");
    // A purge that cannot reach Redis says so (503) but purged the in-process copies.
    let r = send(
        &client(),
        Request::post(format!("http://{}/admin/cache/purge", gw.admin))
            .body(Full::new(Bytes::from_static(
                br#"{"prefix": "http://127.0.0.1/c/"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(gw.gateway.snapshot().cache.stores[0].usage().entries, 0);
}

#[tokio::test]
async fn only_if_cached_never_goes_upstream() {
    let _alone = ALONE.lock().await;
    let origin = Origin::start().await;
    let gw = TestGateway::start(&config(&origin, "{ ttl_s: 60 }", "")).await;
    let c = client();
    let only = [("cache-control", "only-if-cached")];
    // Nothing stored: 504 with the JSON error body, the upstream not asked.
    let r = get(&c, &gw.url("/c/oic?cc=max-age=1"), &only).await;
    r.assert_gateway_error(504);
    assert_eq!(origin.count(), 0);
    // Stored and fresh: answered.
    let first = get(&c, &gw.url("/c/oic?cc=max-age=1"), &[]).await;
    stored(&gw, 1).await;
    let r = get(&c, &gw.url("/c/oic?cc=max-age=1"), &only).await;
    assert_eq!((r.status.as_u16(), n(&r)), (200, n(&first)));
    // Stored but stale: 504 again, still without the upstream; with max-stale it is answered.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&c, &gw.url("/c/oic?cc=max-age=1"), &only).await;
    r.assert_gateway_error(504);
    let r = get(
        &c,
        &gw.url("/c/oic?cc=max-age=1"),
        &[("cache-control", "only-if-cached, max-stale=60")],
    )
    .await;
    assert_eq!((r.status.as_u16(), n(&r)), (200, n(&first)));
    assert_eq!(origin.count(), 1);
}
