//! Upstream host names through a real (tiny, in-test) DNS server on 127.0.0.1: re-resolution
//! follows the record's TTL, a DNS outage keeps the last good addresses, and an address change
//! moves traffic.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::UdpSocket;

/// Answers A queries for any name with `ip` and `ttl`; AAAA with no records; SERVFAIL when down.
struct DnsServer {
    addr: std::net::SocketAddr,
    ip: Arc<Mutex<Ipv4Addr>>,
    ttl: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
    a_queries: Arc<AtomicU64>,
}

impl DnsServer {
    async fn start(ip: Ipv4Addr, ttl: u32) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = DnsServer {
            addr: sock.local_addr().unwrap(),
            ip: Arc::new(Mutex::new(ip)),
            ttl: Arc::new(AtomicU32::new(ttl)),
            down: Arc::new(AtomicBool::new(false)),
            a_queries: Arc::new(AtomicU64::new(0)),
        };
        let (ip, ttl, down, count) = (
            server.ip.clone(),
            server.ttl.clone(),
            server.down.clone(),
            server.a_queries.clone(),
        );
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let q = &buf[..n];
                if n < 17 {
                    continue;
                }
                // Question: labels from offset 12 to a zero byte, then type and class.
                let mut end = 12;
                while end < n && q[end] != 0 {
                    end += 1 + q[end] as usize;
                }
                if end + 5 > n {
                    continue;
                }
                let question = &q[12..end + 5];
                let qtype = u16::from_be_bytes([q[end + 1], q[end + 2]]);
                let failing = down.load(Ordering::SeqCst);
                let answer = qtype == 1 && !failing;
                if qtype == 1 {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let mut r = Vec::new();
                r.extend_from_slice(&q[..2]);
                r.extend_from_slice(if failing {
                    &[0x81, 0x82]
                } else {
                    &[0x81, 0x80]
                });
                r.extend_from_slice(&[0, 1, 0, answer as u8, 0, 0, 0, 0]);
                r.extend_from_slice(question);
                if answer {
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
                    r.extend_from_slice(&ttl.load(Ordering::SeqCst).to_be_bytes());
                    r.extend_from_slice(&[0, 4]);
                    r.extend_from_slice(&ip.lock().unwrap().octets());
                }
                let _ = sock.send_to(&r, peer).await;
            }
        });
        server
    }
}

/// Upstreams "first" on 127.0.0.1 and "second" on 127.0.0.2, on the same port: what a name
/// moving from one address to the other looks like.
async fn one_port_two_addresses() -> (Upstream, Upstream, u16) {
    let first = Upstream::start_with("first", "127.0.0.1:0".parse().unwrap(), Duration::ZERO).await;
    let port = first.addr.port();
    let second = Upstream::start_with(
        "second",
        format!("127.0.0.2:{port}").parse().unwrap(),
        Duration::ZERO,
    )
    .await;
    (first, second, port)
}

fn config(dns: &DnsServer, port: u16, min_ttl: u64) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\ndns: {{ nameservers: [\"{}\"], min_ttl_s: {min_ttl}, max_ttl_s: 60, timeout_ms: 300 }}\nupstreams:\n  - name: up\n    targets: [{{ address: \"svc.portcullis.test:{port}\" }}]\n    pool: {{ max_idle_per_target: 0 }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_follow_ttl_survive_dns_outages_and_move_with_their_address() {
    let (_first, second, port) = one_port_two_addresses().await;
    let dns = DnsServer::start(Ipv4Addr::new(127, 0, 0, 1), 1).await;
    let gw = TestGateway::start(&config(&dns, port, 1)).await;
    let c = client();

    let r = get(&c, &gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-upstream"], "first");

    // TTL 1 s: re-resolved about once a second, not per request.
    let before = dns.a_queries.load(Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queries = dns.a_queries.load(Ordering::SeqCst) - before;
    assert!(
        (2..=6).contains(&queries),
        "{queries} lookups in 3 s with a 1 s TTL"
    );

    // DNS down: the last good address keeps serving (every request opens a new connection).
    dns.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..10 {
        let r = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["x-upstream"], "first");
    }

    // DNS back with a new address: traffic moves after the TTL.
    *dns.ip.lock().unwrap() = Ipv4Addr::new(127, 0, 0, 2);
    dns.down.store(false, Ordering::SeqCst);
    let mut moved = false;
    for _ in 0..40 {
        let r = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
        if r.headers["x-upstream"] == "second" {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "traffic did not follow the new address");
    assert!(second.count() > 0);
}

#[tokio::test]
async fn a_long_ttl_is_not_re_resolved_early() {
    let up = Upstream::start("up").await;
    let dns = DnsServer::start(Ipv4Addr::new(127, 0, 0, 1), 3600).await;
    let gw = TestGateway::start(&config(&dns, up.addr.port(), 1)).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dns.a_queries.load(Ordering::SeqCst),
        1,
        "re-resolved before the TTL (capped at max_ttl_s 60)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_to_an_old_address_are_not_reused_after_it_changes() {
    let (first, second, port) = one_port_two_addresses().await;
    let dns = DnsServer::start(Ipv4Addr::new(127, 0, 0, 1), 1).await;
    // Pooling on (the default), unlike the test above.
    let yaml = config(&dns, port, 1).replace("    pool: { max_idle_per_target: 0 }\n", "");
    assert!(!yaml.contains("max_idle_per_target"));
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    for _ in 0..10 {
        let r = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(r.headers["x-upstream"], "first");
    }
    let doc = get(&c, &format!("http://{}/admin/upstreams", gw.admin), &[])
        .await
        .json();
    assert!(
        doc["upstreams"][0]["targets"][0]["idle_connections"].as_u64() > Some(0),
        "no pooled connection to reuse: {doc}"
    );

    // The name moves; after its 1 s TTL every request goes to the new address, none over a
    // kept connection to the old one.
    *dns.ip.lock().unwrap() = Ipv4Addr::new(127, 0, 0, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&c, &gw.url("/x"), &[]).await;
        if r.headers["x-upstream"] == "second" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic stayed on the old address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (on_first, on_second) = (first.count(), second.count());
    for _ in 0..20 {
        let r = get(&c, &gw.url("/x"), &[]).await;
        assert_eq!(r.headers["x-upstream"], "second");
    }
    assert_eq!(
        first.count(),
        on_first,
        "a stale pooled connection was used"
    );
    assert_eq!(second.count(), on_second + 20);
}
