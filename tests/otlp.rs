//! OTLP/HTTP span export: spans reach a real receiver (decoded from protobuf) with the right
//! ids, attributes and retry events; sampling; and a collector that never answers costs the
//! request path nothing.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// One export request: path, content type and resource attributes.
/// Path, content type, the `x-collector-key` header (empty when absent), resource attributes.
type ExportSeen = (String, String, String, Vec<(String, String)>);

/// A collector on 127.0.0.1 that decodes every export request and keeps its spans.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<Vec<ExportSeen>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(addr: SocketAddr) -> Receiver {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let requests: Arc<Mutex<Vec<_>>> = Arc::default();
        let (s, r) = (Arc::clone(&spans), Arc::clone(&requests));
        let addr = serve_on(addr, move |req: http::Request<hyper::body::Incoming>| {
            let (s, r) = (Arc::clone(&s), Arc::clone(&r));
            async move {
                let path = req.uri().path().to_string();
                let ctype = req
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let key = req
                    .headers()
                    .get("x-collector-key")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let decoded = ExportTraceServiceRequest::decode(body)
                    .expect("export body is an ExportTraceServiceRequest");
                let mut resource = Vec::new();
                for rs in decoded.resource_spans {
                    for kv in rs.resource.unwrap().attributes {
                        resource.push((kv.key.clone(), string(&kv)));
                    }
                    for ss in rs.scope_spans {
                        assert_eq!(ss.scope.unwrap().name, "portcullis");
                        s.lock().unwrap().extend(ss.spans);
                    }
                }
                r.lock().unwrap().push((path, ctype, key, resource));
                respond(200, Bytes::new())
            }
        })
        .await;
        Receiver {
            addr,
            spans,
            requests,
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => panic!("unexpected value {other:?}"),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).map(string)
}

fn config(up: &Upstream, otlp: &str, retry_targets: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nobservability:\n  otlp: {otlp}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\n  - {{ name: dead, targets: [{{ address: \"{}\" }}] }}\n  - {{ name: flaky, targets: [{retry_targets}] }}\nroutes:\n  - name: api\n    match: {{ path: {{ prefix: /api }} }}\n    upstream: up\n  - name: broken\n    match: {{ path: {{ prefix: /broken }} }}\n    upstream: dead\n  - name: retried\n    match: {{ path: {{ prefix: /retried }} }}\n    upstream: flaky\n    retries: {{ attempts: 1, on: [connect_failure], backoff_ms: 1 }}\n",
        up.addr,
        closed_port()
    )
}

async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let text = get(&client(), &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn spans_reach_the_collector_with_ids_attributes_and_retry_events() {
    let up = Upstream::start("up").await;
    let rx = Receiver::start().await;
    let dead = closed_port();
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "{{ endpoint: \"http://{}\", export_interval_ms: 50, service_name: edge, resource: {{ deployment.environment: test }}, headers: {{ x-collector-key: k1 }} }}",
            rx.addr
        ),
        &format!("{{ address: \"{dead}\" }}, {{ address: \"{}\" }}", up.addr),
    ))
    .await;
    let c = client();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let ok = get(
        &c,
        &gw.url("/api/items?token=x"),
        &[
            ("traceparent", parent),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "r-ok"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    let upstream_tp = up.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&c, &gw.url("/nowhere"), &[("x-request-id", "r-404")])
            .await
            .status,
        404
    );
    assert_eq!(
        get(&c, &gw.url("/broken"), &[("x-request-id", "r-502")])
            .await
            .status,
        502
    );
    // Round robin over [dead, live]: of two requests one starts on the dead target and retries.
    for i in 0..2 {
        let r = get(
            &c,
            &gw.url("/retried"),
            &[("x-request-id", &format!("r-retry-{i}"))],
        )
        .await;
        assert_eq!(r.status, 200);
    }

    let spans = rx.wait_for(5).await;
    assert_eq!(spans.len(), 5, "one span per request");
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| attr(&s.attributes, "portcullis.request_id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no span for {id}"))
            .clone()
    };

    // Continued trace: same trace id, the caller's span as parent, the gateway's own span id
    // equal to the parent-id the upstream received.
    let s = by_id("r-ok");
    assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex::encode(&s.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        upstream_tp,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex::encode(&s.span_id)
        )
    );
    assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(s.name, "GET api");
    assert_eq!(s.kind, 2, "server span");
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
    assert_eq!(s.flags & 0x3ff, 0x301, "sampled, parent known remote");
    let a = &s.attributes;
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(a, "url.path").as_deref(), Some("/api/items"));
    assert_eq!(
        attr(a, "url.query"),
        None,
        "queries are not exported unless logged"
    );
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "portcullis.route").as_deref(), Some("api"));
    assert_eq!(attr(a, "portcullis.upstream").as_deref(), Some("up"));
    assert_eq!(attr(a, "portcullis.target"), Some(up.addr.to_string()));
    assert_eq!(attr(a, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(a, "portcullis.auth_result").as_deref(), Some("none"));
    assert_eq!(
        attr(a, "portcullis.rate_limit_result").as_deref(),
        Some("none"),
        "no limit on this route"
    );
    assert_eq!(attr(a, "portcullis.retries").as_deref(), Some("0"));
    assert_eq!(attr(a, "portcullis.config_version").as_deref(), Some("1"));
    assert_eq!(
        attr(a, "http.response.body.size"),
        Some(ok.body.len().to_string())
    );
    assert!(s.status.is_none(), "2xx leaves the status unset");

    // New traces: no parent, a fresh trace id.
    let s = by_id("r-404");
    assert!(s.parent_span_id.is_empty());
    assert_eq!(s.trace_id.len(), 16);
    assert_ne!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.name, "GET", "no route");
    assert_eq!(attr(&s.attributes, "portcullis.route"), None);
    assert_eq!(
        attr(&s.attributes, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert!(s.status.is_none(), "4xx is not a server error");

    let s = by_id("r-502");
    assert_eq!(
        s.status.as_ref().map(|st| st.code),
        Some(2),
        "5xx is an error"
    );
    assert_eq!(
        attr(&s.attributes, "portcullis.upstream").as_deref(),
        Some("dead")
    );

    // Retries are events on the span.
    let retried: Vec<Span> = ["r-retry-0", "r-retry-1"]
        .iter()
        .map(|id| by_id(id))
        .collect();
    let with_retry: Vec<&Span> = retried.iter().filter(|s| !s.events.is_empty()).collect();
    // The balancer may send either or both to the dead target first; a span without a retry
    // must say so too.
    assert!(
        !with_retry.is_empty(),
        "no request started on the dead target"
    );
    for s in &retried {
        let retries = attr(&s.attributes, "portcullis.retries").unwrap();
        assert_eq!(retries, s.events.len().to_string());
    }
    let s = with_retry[0];
    assert_eq!(
        attr(&s.attributes, "portcullis.retries").as_deref(),
        Some("1")
    );
    assert_eq!(s.events.len(), 1);
    let e = &s.events[0];
    assert_eq!(e.name, "retry");
    assert!(e.time_unix_nano >= s.start_time_unix_nano && e.time_unix_nano <= s.end_time_unix_nano);
    assert_eq!(
        attr(&e.attributes, "portcullis.retry.attempt").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(&e.attributes, "portcullis.retry.reason").as_deref(),
        Some("connect_failure")
    );
    assert_eq!(
        attr(&e.attributes, "portcullis.retry.failed_target"),
        Some(dead.to_string())
    );
    assert_eq!(
        attr(&s.attributes, "portcullis.target"),
        Some(up.addr.to_string())
    );

    // The export requests themselves: OTLP/HTTP protobuf on /v1/traces with the resource.
    let requests = rx.requests.lock().unwrap().clone();
    assert!(!requests.is_empty());
    for (path, ctype, key, resource) in &requests {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
        // `otlp.headers` are sent with every export (a collector's API key, say).
        assert_eq!(key, "k1");
        let get = |k: &str| {
            resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("edge"));
        assert_eq!(get("deployment.environment"), Some("test"));
        // This test's gateway runs in-process without --instance-id: the host name.
        assert_eq!(
            get("service.instance.id"),
            Some(portcullis::observe::instance::id())
        );
        assert!(!portcullis::observe::instance::id().is_empty());
    }
    assert_eq!(
        metric(&gw, "portcullis_otlp_spans_total{result=\"exported\"}").await,
        5.0
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_otlp_spans_total{result=\"dropped_queue_full\"}"
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn sampling_ratio_and_the_callers_decision() {
    let up = Upstream::start("up").await;
    let rx = Receiver::start().await;
    let gw = TestGateway::start(&config(
        &up,
        &format!(
            "{{ endpoint: \"http://{}/v1/traces\", export_interval_ms: 50, sample_ratio: 0.0 }}",
            rx.addr
        ),
        &format!("{{ address: \"{}\" }}", up.addr),
    ))
    .await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 200);
        // Ratio 0: new traces are not sampled, and upstream is told so.
        let tp = up.last().headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(tp.ends_with("-02"), "{tp}");
    }
    // A caller that sampled its trace is followed (parent-based); one that did not, too.
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    get(&c, &gw.url("/api/x"), &[("traceparent", sampled)]).await;
    get(&c, &gw.url("/api/x"), &[("traceparent", unsampled)]).await;
    let spans = rx.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans_later = rx.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans_later.len(), 1, "nothing else is exported");
    assert_eq!(
        hex::encode(&spans[0].trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

/// A collector that accepts connections and never answers: the worst case for an exporter.
async fn black_hole() -> (SocketAddr, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let h = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

async fn latencies(c: &HttpClient, gw: &TestGateway, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(get(c, &gw.url("/api/x"), &[]).await.status, 200);
        out.push(t.elapsed());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_requests_nothing() {
    let up = Upstream::start("up").await;
    let (hole, _held) = black_hole().await;
    let targets = format!("{{ address: \"{}\" }}", up.addr);
    let stuck = TestGateway::start(&config(
        &up,
        &format!("{{ endpoint: \"http://{hole}\", export_interval_ms: 10, batch_size: 10, queue_size: 50, timeout_ms: 60000 }}"),
        &targets,
    ))
    .await;
    let baseline_gw = TestGateway::start(
        &config(&up, "{ endpoint: \"http://127.0.0.1:9\" }", &targets).replace(
            "  otlp: { endpoint: \"http://127.0.0.1:9\" }\n",
            "  metrics: { enabled: true }\n",
        ),
    )
    .await;
    let c = client();
    // Warm both, then interleave measurements so machine noise hits both alike.
    latencies(&c, &stuck, 20).await;
    latencies(&c, &baseline_gw, 20).await;
    let mut with_stuck = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..5 {
        with_stuck.extend(latencies(&c, &stuck, 100).await);
        baseline.extend(latencies(&c, &baseline_gw, 100).await);
    }
    with_stuck.sort();
    baseline.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let (b50, s50) = (p(&baseline, 0.5), p(&with_stuck, 0.5));
    let (b99, s99) = (p(&baseline, 0.99), p(&with_stuck, 0.99));
    eprintln!("p50 {b50:?} vs {s50:?}, p99 {b99:?} vs {s99:?}");
    // The export thread is stuck on its first batch for a minute; requests must not notice.
    assert!(
        s50 < b50 * 2 + Duration::from_millis(1),
        "p50 {s50:?} vs baseline {b50:?}"
    );
    assert!(
        s99 < b99 * 3 + Duration::from_millis(5),
        "p99 {s99:?} vs baseline {b99:?}"
    );
    let dropped = metric(
        &stuck,
        "portcullis_otlp_spans_total{result=\"dropped_queue_full\"}",
    )
    .await;
    assert!(
        dropped >= 400.0,
        "spans beyond the queue are dropped and counted: {dropped}"
    );
    assert_eq!(
        metric(&stuck, "portcullis_otlp_spans_total{result=\"exported\"}").await,
        0.0
    );
}

#[tokio::test]
async fn an_unreachable_collector_is_counted_and_recovers() {
    let up = Upstream::start("up").await;
    // Reserve a port, keep it closed for a while, then start the receiver on it.
    let reserved = ClosedPort::reserve();
    let port = reserved.addr;
    let gw = TestGateway::start(&config(
        &up,
        &format!("{{ endpoint: \"http://{port}\", export_interval_ms: 20, timeout_ms: 200 }}"),
        &format!("{{ address: \"{}\" }}", up.addr),
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &gw,
        "portcullis_otlp_export_requests_total{result=\"failed\"}",
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "export failure never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_otlp_spans_total{result=\"dropped_export_failed\"}"
        )
        .await,
        3.0
    );

    let rx = Receiver::start_on(reserved.release()).await;
    get(&c, &gw.url("/api/x"), &[]).await;
    assert_eq!(
        rx.wait_for(1).await.len(),
        1,
        "export resumes once the collector is up"
    );
}
