//! The request head path, end to end in process: arbitrary bytes arrive on a connection served
//! exactly as a listener serves it (hyper's HTTP/1.1 parser, or HTTP/2 when the bytes open with
//! its preface), and every request parsed from them runs the whole pipeline — the RFC checks,
//! path normalization, routing (hosts, regexes, header predicates, preflights), JWT and API-key
//! authentication, a local rate limit, request rules, rewrites, direct responses and a forward
//! to a closed port. Looking for panics; the answer itself is not checked.
//!
//! Run (from the project root): `cargo fuzz run request_head -s none fuzz/corpus/request_head
//! fuzz/seeds/request_head -- -max_total_time=600`. The seeds are committed; the corpus is not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::connection::{ConnContext, ListenerRuntime};
use portcullis::gateway::Gateway;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0", limits: { max_header_bytes: 8192 } }]
admin: { address: "127.0.0.1:0" }
defaults: { auth: none, timeout_ms: 200 }
auth:
  jwt:
    - name: hs
      secret: "0123456789abcdef0123456789abcdef"
      algorithms: [HS256]
      forward_claims: { sub: X-User }
  api_keys:
    - name: keys
      keys: [{ id: a, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, scopes: [read] }]
rate_limits:
  - { name: per-ip, algorithm: token_bucket, capacity: 1000, refill_per_second: 1000, key: [client_ip, "header:x-tenant"] }
upstreams:
  - { name: closed, targets: [{ address: "127.0.0.1:1" }], connect_timeout_ms: 50 }
routes:
  - name: host
    match: { hosts: [api.example.com, "*.example.org"], path: { prefix: /v1 }, methods: [GET, POST] }
    direct_response: { status: 200, body: host }
  - name: regex
    match: { path: { regex: "^/items/[0-9]+$" }, headers: [{ name: x-version, regex: "^v[12]$" }] }
    direct_response: { status: 200, body: regex }
  - name: jwt
    match: { path: { prefix: /jwt } }
    auth: { jwt: hs }
    direct_response: { status: 204 }
  - name: keys
    match: { path: { prefix: /keys } }
    auth: { any: [{ api_key: keys }, { jwt: hs }] }
    authorization: { required_scopes: [read] }
    rate_limits: [per-ip]
    direct_response: { status: 204 }
  - name: rules
    match: { path: { exact: /upload } }
    request: { max_body_bytes: 64, content_types: [application/json], required_headers: [x-tenant] }
    direct_response: { status: 201 }
  - name: forward
    match: { path: { prefix: /fwd } }
    upstream: closed
    rewrite: { strip_prefix: /fwd }
    retries: { attempts: 1, on: [connect_failure] }
    headers: { request: { set: { x-a: b }, remove: [cookie] }, response: { set: { x-r: s } } }
  - name: all
    match: { path: { prefix: / } }
    direct_response: { status: 404, body: none }
"#;

struct Harness {
    rt: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    listener: Arc<ListenerRuntime>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _stop: tokio::sync::watch::Sender<bool>,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateway = rt.block_on(async {
        Gateway::load_document(CONFIG, "fuzz.yaml").expect("the fuzz config is valid")
    });
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    Harness {
        rt,
        gateway,
        listener: Arc::new(ListenerRuntime::new("public")),
        shutdown,
        _stop: stop,
    }
});

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let ctx = Arc::new(ConnContext::new(
            Arc::clone(&h.gateway),
            Arc::clone(&h.listener),
            std::net::IpAddr::from([127, 0, 0, 1]),
            "http",
            None,
            None,
            h.shutdown.clone(),
        ));
        let limits = h.gateway.snapshot().listeners[0].limits.clone();
        let serve = portcullis::server::serve_connection(
            server,
            ctx,
            &limits,
            h.shutdown.clone(),
            portcullis::server::Protocols::Sniffed,
        );
        let exchange = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
        };
        // Both ends run until the connection closes; a request left waiting (a body never
        // finished) is cut off here.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            tokio::join!(serve, exchange)
        })
        .await;
    });
});
