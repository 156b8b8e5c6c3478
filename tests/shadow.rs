//! Shadow traffic end to end: real primaries and candidates behind the gateway, real sockets.
//! The comparison (with noise cancelling), the isolation of the primary from a slow or dead
//! candidate, what is copied and what is not, and fault injection.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// `{"id": <path's last segment>, "price": 10 (or 11 when `changed`), "ts": <random>}`.
fn priced(r: &Received, changed: bool) -> Answer {
    let id = r.path.rsplit('/').next().unwrap_or("").to_string();
    Answer::json(
        200,
        serde_json::json!({
            "id": id,
            "price": if changed { 11 } else { 10 },
            "currency": "EUR",
            "ts": fastrand::u64(..),
            "items": [{"sku": "a", "qty": 1.0}, {"sku": "b", "qty": 2}],
        }),
    )
}

fn mirrored_config(
    targets: &[&Service],
    candidate: &str,
    mirror: &str,
    route_extra: &str,
) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|s| format!("{{ address: \"{}\" }}", s.addr))
        .collect();
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: stable, targets: [{}], load_balancing: round_robin }}\n  - {{ name: candidate, targets: [{{ address: \"{candidate}\" }}] }}\nroutes:\n  - name: prices\n    match: {{ path: {{ prefix: /prices }} }}\n    upstream: stable\n    mirror: {mirror}\n{route_extra}",
        targets.join(", ")
    )
}

async fn shadow_doc(gw: &TestGateway) -> serde_json::Value {
    get(&client(), &format!("http://{}/admin/shadow", gw.admin), &[])
        .await
        .json()["routes"][0]
        .clone()
}

async fn wait_compared(gw: &TestGateway, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let doc = shadow_doc(gw).await;
        if doc["compare"]["compared"].as_u64() == Some(n) {
            return doc;
        }
        assert!(Instant::now() < deadline, "not all compared: {doc:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn only_the_field_the_candidate_changes_is_reported_not_the_noisy_one() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let b = Service::start(|r| priced(r, false)).await;
    // The candidate changes the price in 2% of its answers (pseudo-random, not by path).
    let changed = Arc::new(AtomicU64::new(0));
    let ch = changed.clone();
    let cand = Service::start(move |r| {
        let change = fastrand::u32(0..100) < 2;
        if change {
            ch.fetch_add(1, Ordering::SeqCst);
        }
        priced(r, change)
    })
    .await;
    let gw = TestGateway::start(&mirrored_config(
        &[&a, &b],
        &cand.addr.to_string(),
        "{ upstream: candidate, percent: 100, compare: true, noise_percent: 20, samples: 5 }",
        "",
    ))
    .await;
    let c = client();
    const N: u64 = 1500;
    for i in 0..N {
        let r = get(
            &c,
            &gw.url(&format!("/prices/{i}")),
            &[("authorization", "Bearer secret"), ("cookie", "sid=1")],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let doc = wait_compared(&gw, N).await;
    let cmp = &doc["compare"];
    assert_eq!(cmp["noise_cancelling"], true, "{doc:#}");
    let noise = cmp["noise_compared"].as_u64().unwrap();
    assert!(
        (200..=400).contains(&noise),
        "20% of {N} noise pairs: {doc:#}"
    );
    let reported: Vec<&str> = cmp["reported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(reported, vec!["$.price"], "{doc:#}");
    let price = &cmp["reported"][0];
    let expected = 100.0 * changed.load(Ordering::SeqCst) as f64 / N as f64;
    let rate = price["candidate_percent"].as_f64().unwrap();
    assert!((rate - expected).abs() < 1e-9, "{rate} vs {expected}");
    assert!((0.8..=3.5).contains(&rate), "near 2%: {rate}");
    assert_eq!(price["noise_percent"].as_f64(), Some(0.0));
    // `$.ts` differs every time on both sides: tracked, never reported.
    let ts = cmp["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "$.ts")
        .expect("$.ts tracked");
    assert_eq!(ts["candidate_percent"].as_f64(), Some(100.0));
    assert_eq!(ts["noise_percent"].as_f64(), Some(100.0));
    // Numbers by value: `qty` 1.0 and 2 never differ; nor do the ignored headers.
    assert!(!cmp["fields"].to_string().contains("qty"));
    assert!(!cmp["fields"].to_string().contains("header."), "{doc:#}");
    // Samples: the last 5 differing exchanges, with the field and no request headers.
    let samples = cmp["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 5);
    assert!(samples[4]["fields"].to_string().contains("$.ts"));
    assert!(!cmp["samples"].to_string().contains("secret"));

    // The copies: marked, without the credentials, the same path; the noise copies went to
    // the primary targets, marked as noise.
    let got = cand.received();
    assert_eq!(got.len() as u64, N);
    assert!(got
        .iter()
        .all(|r| r.headers["x-portcullis-shadow"] == "mirror"
            && !r.headers.contains_key("authorization")
            && !r.headers.contains_key("cookie")));
    assert_eq!(got[0].path, "/prices/0");
    let noise_seen = a
        .received()
        .iter()
        .chain(b.received().iter())
        .filter(|r| {
            r.headers
                .get("x-portcullis-shadow")
                .is_some_and(|v| v == "noise")
        })
        .count() as u64;
    assert_eq!(noise_seen, noise);
    let primaries_saw_credentials = a
        .received()
        .iter()
        .filter(|r| r.headers.get("x-portcullis-shadow").is_none())
        .all(|r| r.headers.contains_key("authorization"));
    assert!(primaries_saw_credentials);

    // Metrics: the reported field only.
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains(&format!(
            "portcullis_shadow_field_differences_total{{route=\"prices\",field=\"$.price\"}} {}",
            changed.load(Ordering::SeqCst)
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("field=\"$.ts\""));
    assert!(metrics.contains(&format!(
        "portcullis_mirror_requests_total{{route=\"prices\"}} {N}"
    )));

    // `portcullis shadow report` prints the same.
    // Run off this runtime's thread: the gateway under test answers on it.
    let admin = format!("http://{}", gw.admin);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["shadow", "report", "prices", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("$.price"), "{text}");
    assert!(text.contains(&format!("compared {N}")), "{text}");
    let table: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("$."))
        .collect();
    assert_eq!(table.len(), 1, "{text}");
}

#[tokio::test]
async fn with_one_primary_target_raw_differences_are_reported_and_said_so() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let cand = Service::start(|r| priced(r, false)).await;
    let gw = TestGateway::start(&mirrored_config(
        &[&a],
        &cand.addr.to_string(),
        "{ upstream: candidate, compare: true, ignore_paths: [\"$.items\"] }",
        "",
    ))
    .await;
    let c = client();
    for i in 0..20 {
        assert_eq!(
            get(&c, &gw.url(&format!("/prices/{i}")), &[]).await.status,
            200
        );
    }
    let doc = wait_compared(&gw, 20).await;
    assert_eq!(doc["compare"]["noise_cancelling"], false);
    assert!(doc["compare"]["note"]
        .as_str()
        .unwrap()
        .contains("raw differences"));
    assert_eq!(doc["compare"]["reported"][0]["field"], "$.ts");
    assert_eq!(doc["compare"]["reported"].as_array().unwrap().len(), 1);
    // Nothing was sent to a second target: there is none.
    assert_eq!(a.count(), 20);
    // `explain` says what the mirror does with a GET and that a POST is not copied.
    let explain = |method: &'static str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["explain", "-c"])
            .arg(&gw.config_path)
            .args([method, "http://x/prices/1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let get_text = explain("GET");
    assert!(
        get_text.contains("mirror: 100% of requests (by request id) copied to upstream candidate, compared, bodies up to 65536 bytes, at most 64 in flight, credentials removed"),
        "{get_text}"
    );
    let post_text = explain("POST");
    assert!(
        post_text.contains("mirror: not for POST (mirrored methods: GET, HEAD, OPTIONS)"),
        "{post_text}"
    );
}

#[tokio::test]
async fn a_slow_or_dead_candidate_never_delays_the_primary_and_skips_are_counted() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let slow = Service::start(|r| Answer {
        delay: Duration::from_secs(10),
        ..priced(r, false)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        "observability:\n  access_log: {{ destination: \"{}\" }}\n{}",
        log.display(),
        mirrored_config(
            &[&a],
            &slow.addr.to_string(),
            "{ upstream: candidate, compare: true, max_in_flight: 4, timeout_ms: 15000 }",
            "",
        )
    ))
    .await;
    let c = client();
    let started = Instant::now();
    for i in 0..40 {
        let t = Instant::now();
        let r = get(&c, &gw.url(&format!("/prices/{i}")), &[]).await;
        assert_eq!(r.status, 200);
        // A copy held for 10 s would show here: none of the primaries waits for it.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "request {i} waited {:?}",
            t.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    let doc = shadow_doc(&gw).await;
    assert_eq!(doc["in_flight"], 4, "{doc:#}");
    assert_eq!(doc["not_mirrored"]["in_flight_full"], 36, "{doc:#}");
    // POST is not mirrored by default.
    let post = send(
        &c,
        Request::post(gw.url("/prices/p"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(shadow_doc(&gw).await["not_mirrored"]["method"], 1);
    // The access log says what the mirror did with each request.
    let mut lines = Vec::new();
    wait_until("41 log lines", Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        lines.len() == 41
    })
    .await;
    let said = |v: &str| lines.iter().filter(|l| l["mirror"] == v).count();
    assert_eq!(
        (said("copied"), said("in_flight_full"), said("method")),
        (4, 36, 1)
    );
    drop(gw);

    // A dead candidate: every primary answers, every copy is counted as a mirror error.
    let dead = ClosedPort::reserve();
    let gw = TestGateway::start(&mirrored_config(
        &[&a],
        &dead.release().to_string(),
        "{ upstream: candidate, percent: 100 }",
        "",
    ))
    .await;
    for i in 0..20 {
        assert_eq!(
            get(&c, &gw.url(&format!("/prices/{i}")), &[]).await.status,
            200
        );
    }
    wait_until("copies counted", Duration::from_secs(10), || {
        let s = &gw.gateway.snapshot().routes[0].metrics.shadow;
        s.skipped(portcullis::shadow::Skip::MirrorError) == 20
    })
    .await;
}

#[tokio::test]
async fn bodies_are_copied_within_the_cap_and_sampling_follows_the_request_id() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let cand = Service::start(|r| priced(r, false)).await;
    let gw = TestGateway::start(&mirrored_config(
        &[&a],
        &cand.addr.to_string(),
        "{ upstream: candidate, percent: 50, methods: [GET, POST], max_body_bytes: 16, forward_credentials: true }",
        "",
    ))
    .await;
    let c = client();
    // The same request id is sampled the same way every time; about half are.
    let mut sampled = 0;
    for i in 0..200 {
        let id = format!("req-{i}");
        let before = counts(&gw, &cand);
        let r = send(
            &c,
            Request::post(gw.url("/prices/b"))
                .header("x-request-id", &id)
                .header("authorization", "Bearer kept")
                .body(Full::new(Bytes::from_static(b"0123456789")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        let copied = wait_for_count(&gw, &cand, before).await;
        if copied {
            sampled += 1;
            let last = cand.received().pop().unwrap();
            assert_eq!(last.body, Bytes::from_static(b"0123456789"));
            assert_eq!(last.headers["x-request-id"], id.as_str());
            assert_eq!(last.headers["authorization"], "Bearer kept");
        }
        let again_before = counts(&gw, &cand);
        send(
            &c,
            Request::post(gw.url("/prices/b"))
                .header("x-request-id", &id)
                .body(Full::new(Bytes::from_static(b"0123456789")))
                .unwrap(),
        )
        .await;
        assert_eq!(
            wait_for_count(&gw, &cand, again_before).await,
            copied,
            "{id}"
        );
    }
    assert!(
        (70..=130).contains(&sampled),
        "{sampled} of 200 sampled at 50%"
    );
    // Larger than max_body_bytes: the primary gets it, the candidate does not (declared
    // length, and a chunked body that grows past the cap).
    let before = cand.count();
    let mut too_large = 0;
    for i in 0..40 {
        let r = send(
            &c,
            Request::post(gw.url("/prices/big"))
                .header("x-request-id", format!("big-{i}"))
                .body(Full::new(Bytes::from(vec![b'x'; 100])))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(a.received().last().unwrap().body.len(), 100);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cand.count(), before);
    let doc = shadow_doc(&gw).await;
    too_large += doc["not_mirrored"]["body_too_large"].as_u64().unwrap();
    assert!(too_large > 0 && too_large < 40, "{doc:#}");
    assert_eq!(
        too_large
            + doc["not_mirrored"]["sampled_out"].as_u64().unwrap()
            + doc["mirrored"].as_u64().unwrap(),
        440,
        "every request is either mirrored or counted with its reason: {doc:#}"
    );
}

/// Whether the request just answered was copied: the candidate got one more request, or the
/// route counted one more request sampled out (counted before the primary is even sent).
async fn wait_for_count(gw: &TestGateway, s: &Service, before: (u64, u64)) -> bool {
    let sampled_out = || {
        gw.gateway.snapshot().routes[0]
            .metrics
            .shadow
            .skipped(portcullis::shadow::Skip::SampledOut)
    };
    for _ in 0..400 {
        if s.count() > before.0 {
            return true;
        }
        if sampled_out() > before.1 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("neither copied nor counted as sampled out");
}

fn counts(gw: &TestGateway, s: &Service) -> (u64, u64) {
    (
        s.count(),
        gw.gateway.snapshot().routes[0]
            .metrics
            .shadow
            .skipped(portcullis::shadow::Skip::SampledOut),
    )
}

#[tokio::test]
async fn fault_injection_delays_and_aborts_the_configured_share() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n  - {{ name: stable, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: rehearsed\n    match: {{ path: {{ prefix: /r }} }}\n    upstream: stable\n    fault: {{ delay: {{ ms: 40, percent: 25 }}, abort: {{ status: 503, percent: 10 }}, only_with_header: x-rehearsal }}\n",
        a.addr
    );
    let gw = Arc::new(TestGateway::start(&yaml).await);
    const N: usize = 2000;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for i in (w..N).step_by(16) {
                let t = Instant::now();
                let r = get(&c, &gw.url(&format!("/r/{i}")), &[("x-rehearsal", "1")]).await;
                out.push((r, t.elapsed()));
            }
            out
        }));
    }
    let mut aborted = 0;
    let mut slow = 0;
    for t in tasks {
        for (r, took) in t.await.unwrap() {
            match r.status.as_u16() {
                503 => {
                    r.assert_gateway_error(503);
                    assert!(r.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("fault injection"));
                    aborted += 1;
                }
                200 => {}
                s => panic!("unexpected {s}"),
            }
            if took >= Duration::from_millis(40) {
                slow += 1;
            }
        }
    }
    let share = |n: usize| 100.0 * n as f64 / N as f64;
    assert!(
        (share(aborted) - 10.0).abs() <= 3.0,
        "aborted {aborted} of {N}"
    );
    let m = &gw.gateway.snapshot().routes[0].metrics.faults;
    let delays = m.delays.load(Ordering::SeqCst) as usize;
    assert!(
        (share(delays) - 25.0).abs() <= 3.0,
        "delayed {delays} of {N}"
    );
    // Each counted delay was real: at least that many requests took the 40 ms.
    assert!(
        slow >= delays,
        "{slow} slow requests, {delays} delays counted"
    );
    assert_eq!(m.aborts.load(Ordering::SeqCst) as usize, aborted);
    // Aborted requests never reached the upstream.
    assert_eq!(a.count() as usize, N - aborted);

    // Without the header: no fault at all.
    let c = client();
    for i in 0..200 {
        assert_eq!(get(&c, &gw.url(&format!("/r/{i}")), &[]).await.status, 200);
    }
    assert_eq!(m.aborts.load(Ordering::SeqCst) as usize, aborted);
    // `explain` shows the policy.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(["GET", "http://x/r/1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "fault injection: delay 40 ms on 25%, abort 503 on 10%, only with header x-rehearsal"
        ),
        "{text}"
    );
}

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

#[tokio::test]
async fn the_copy_has_the_verified_identity_but_never_the_credential() {
    let _alone = ALONE.lock().await;
    let a = Service::start(|r| priced(r, false)).await;
    let cand = Service::start(|r| priced(r, false)).await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nauth:\n  jwt:\n    - name: users\n      secret: \"{SECRET}\"\n      algorithms: [HS256]\n      forward_claims: {{ sub: x-user }}\nupstreams:\n  - {{ name: stable, targets: [{{ address: \"{}\" }}] }}\n  - {{ name: candidate, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: prices\n    match: {{ path: {{ prefix: /prices }} }}\n    upstream: stable\n    auth: {{ jwt: users }}\n    mirror: {{ upstream: candidate }}\n",
        a.addr, cand.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let c = client();
    let bearer = format!("Bearer {token}");
    // A client-sent identity header never passes, on either side.
    let r = get(
        &c,
        &gw.url("/prices/1"),
        &[("authorization", &bearer), ("x-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200);
    // Refused by auth: never forwarded, never copied.
    assert_eq!(get(&c, &gw.url("/prices/2"), &[]).await.status, 401);
    wait_until("the copy arrived", Duration::from_secs(5), || {
        cand.count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let copy = &cand.received()[0];
    assert_eq!(copy.headers["x-user"], "alice");
    assert!(!copy.headers.contains_key("authorization"));
    assert_eq!(copy.headers["x-portcullis-shadow"], "mirror");
    assert_eq!(cand.count(), 1);
    let primary = &a.received()[0];
    assert_eq!(primary.headers["x-user"], "alice");
    // The route's credential is not forwarded to the primary either.
    assert!(!primary.headers.contains_key("authorization"));
    assert_eq!(
        primary.headers["x-request-id"],
        copy.headers["x-request-id"]
    );
}
