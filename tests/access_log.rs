//! The JSON access log: one correct line per request, sampling, query masking, rotation, and a
//! blocked destination that drops lines instead of slowing requests.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

fn config(up: &Upstream, access_log: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nauth:\n  api_keys:\n    - {{ name: partners, keys: [{{ id: k1, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, tenant: acme }}] }}\nrate_limits:\n  - {{ name: one, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001, key: [tenant] }}\nobservability:\n  trace_context: {{ response_header: x-trace-id }}\n  access_log: {access_log}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\n  - {{ name: dead, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ path: {{ prefix: /api }} }}\n    upstream: up\n  - name: broken\n    match: {{ path: {{ prefix: /broken }} }}\n    upstream: dead\n  - name: secure\n    match: {{ path: {{ prefix: /secure }} }}\n    upstream: up\n    auth: {{ api_key: partners }}\n    rate_limits: [one]\n",
        up.addr,
        closed_port()
    )
}

fn lines(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let ls: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if ls.len() >= want {
            return ls;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("fewer than {want} lines in {}", path.display());
}

#[tokio::test]
async fn one_well_formed_line_per_request_with_the_right_values() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "{{ destination: \"{}\", include_query: true }}",
            file.display()
        ),
    ))
    .await;
    let c = client();

    let ok = get(
        &c,
        &gw.url("/api/items?page=2&access_token=s3cret"),
        &[("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(ok.status, 200);
    let up_body_len = ok.body.len() as u64;
    get(&c, &gw.url("/nowhere"), &[("x-request-id", "req-2")]).await;
    get(&c, &gw.url("/broken"), &[("x-request-id", "req-3")]).await;
    let post = http::Request::post(gw.url("/api/upload"))
        .header("x-request-id", "req-4")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'a';
            1234
        ])))
        .unwrap();
    assert_eq!(send(&c, post).await.status, 200);
    let key = ("x-api-key", "test");
    assert_eq!(
        get(&c, &gw.url("/secure"), &[key, ("x-request-id", "req-5")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&c, &gw.url("/secure"), &[key, ("x-request-id", "req-6")])
            .await
            .status,
        429
    );
    assert_eq!(
        get(&c, &gw.url("/secure"), &[("x-request-id", "req-7")])
            .await
            .status,
        401
    );

    let ls = lines(&file, 7);
    assert_eq!(ls.len(), 7);
    let by_id = |id: &str| {
        ls.iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };

    let l = by_id("req-1");
    for field in [
        "timestamp",
        "request_id",
        "trace_id",
        "route",
        "config_version",
        "method",
        "path",
        "status",
        "upstream",
        "target",
        "latency_ms",
        "upstream_latency_ms",
        "bytes_in",
        "bytes_out",
        "client_ip",
        "tenant",
        "subject",
        "auth_result",
        "rate_limited",
        "retries",
    ] {
        assert!(l.get(field).is_some(), "missing {field}: {l}");
    }
    assert_eq!(l["route"], "api");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/api/items?page=2&access_token=***");
    assert_eq!(l["status"], 200);
    assert_eq!(l["upstream"], "up");
    assert_eq!(l["target"], up.addr.to_string());
    assert_eq!(l["bytes_out"], up_body_len);
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert_eq!(l["retries"], 0);
    assert_eq!(l["config_version"], 1);
    assert_eq!(l["trace_id"], ok.headers["x-trace-id"].to_str().unwrap());
    assert!(l["latency_ms"].as_f64().unwrap() >= l["upstream_latency_ms"].as_f64().unwrap());
    assert!(humantime::parse_rfc3339(l["timestamp"].as_str().unwrap()).is_ok());

    let l = by_id("req-2");
    assert_eq!(
        (
            l["status"].as_u64(),
            l["route"].is_null(),
            l["upstream"].is_null()
        ),
        (Some(404), true, true)
    );
    let l = by_id("req-3");
    assert_eq!(
        (
            l["status"].as_u64(),
            l["route"].as_str(),
            l["upstream"].as_str()
        ),
        (Some(502), Some("broken"), Some("dead"))
    );
    let l = by_id("req-4");
    assert_eq!(
        (l["method"].as_str(), l["bytes_in"].as_u64()),
        (Some("POST"), Some(1234))
    );
    assert_eq!(l["auth_result"], "none");
    assert_eq!(l["tenant"], serde_json::Value::Null);
    let l = by_id("req-5");
    assert_eq!(
        (
            &l["tenant"],
            &l["subject"],
            &l["auth_result"],
            &l["rate_limited"]
        ),
        (
            &json!("acme"),
            &json!("k1"),
            &json!("success"),
            &json!(false)
        )
    );
    let l = by_id("req-6");
    assert_eq!(
        (l["status"].as_u64(), &l["rate_limited"], &l["auth_result"]),
        (Some(429), &json!(true), &json!("success"))
    );
    let l = by_id("req-7");
    assert_eq!(
        (l["status"].as_u64(), &l["auth_result"], &l["tenant"]),
        (Some(401), &json!("failure"), &serde_json::Value::Null)
    );
}

#[tokio::test]
async fn sampling_keeps_errors_and_queries_are_left_out_unless_asked_for() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = TestGateway::start(&config(
        &up,
        &format!("{{ destination: \"{}\", sample_2xx: 0.0 }}", file.display()),
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        get(&c, &gw.url("/api/x?token=abc"), &[]).await;
    }
    get(&c, &gw.url("/nowhere?password=hunter2"), &[]).await;
    let ls = lines(&file, 1);
    std::thread::sleep(Duration::from_millis(100));
    let ls = if ls.len() == 1 { lines(&file, 1) } else { ls };
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["status"], 404);
    assert_eq!(ls[0]["path"], "/nowhere");
    let stats = get(&c, &format!("http://{}/admin/access-log", gw.admin), &[])
        .await
        .json();
    assert_eq!(stats["sampled_out"], 20, "{stats}");
}

#[tokio::test]
async fn reopen_after_rotation_writes_to_a_new_file() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = TestGateway::start(&config(
        &up,
        &format!("{{ destination: \"{}\" }}", file.display()),
    ))
    .await;
    let c = client();
    get(&c, &gw.url("/api/before"), &[]).await;
    lines(&file, 1);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    gw.gateway.reopen_access_log();
    get(&c, &gw.url("/api/after"), &[]).await;
    let new = lines(&file, 1);
    assert_eq!(new[0]["path"], "/api/after");
    assert_eq!(lines(&rotated, 1).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_destination_drops_lines_and_requests_stay_fast() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("blocked.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in this test's own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // A reader that never reads: the pipe fills and the log writer blocks on it.
    use std::os::unix::fs::OpenOptionsExt;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let gw = TestGateway::start(&config(
        &up,
        &format!("{{ destination: \"{}\", queue_size: 16 }}", fifo.display()),
    ))
    .await;
    let c = client();
    let mut slowest = Duration::ZERO;
    let n = 3000;
    for i in 0..n {
        let started = Instant::now();
        let r = get(
            &c,
            &gw.url(&format!("/api/{i}?padding={}", "p".repeat(200))),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    let stats = get(&c, &format!("http://{}/admin/access-log", gw.admin), &[])
        .await
        .json();
    eprintln!("{n} requests, slowest {slowest:?}, log stats {stats}");
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        slowest < Duration::from_millis(200),
        "a request waited on the log: {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_file() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let yaml = format!(
        "listeners: [{{ name: public, address: \"{{LISTEN}}\" }}]\nadmin: {{ address: \"{{ADMIN}}\" }}\ndefaults: {{ auth: none }}\nobservability:\n  access_log: {{ destination: \"{}\" }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n",
        file.display(),
        up.addr
    );
    let gw = GatewayProcess::spawn(&yaml, 1).await;
    let c = client();
    get(&c, &format!("http://{}/one", gw.addr), &[]).await;
    lines(&file, 1);
    std::fs::rename(&file, dir.path().join("old.log")).unwrap();
    gw.signal(libc::SIGUSR1);
    // Reopening creates the file again under its configured name.
    wait_until("the log file reopened", Duration::from_secs(5), || {
        file.exists()
    })
    .await;
    get(&c, &format!("http://{}/two", gw.addr), &[]).await;
    assert_eq!(lines(&file, 1)[0]["path"], "/two");
}
