//! Edge protection through real sockets: the client address behind trusted proxies and the
//! PROXY protocol (what the upstream was told), IP rules and request rules (each refusal with
//! its status and JSON body, never reaching the upstream), and their metrics.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(listener_extra: &str, top: &str, route_extra: &str, up: std::net::SocketAddr) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n{listener_extra}admin:\n  address: 127.0.0.1:0\ndefaults:\n  auth: none\n{top}upstreams:\n  - name: up\n    targets: [{{ address: \"{up}\" }}]\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n{route_extra}"
    )
}

const WAIT: Duration = Duration::from_secs(5);

fn get(path: &str, headers: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Sends `headers` and returns what X-Forwarded-For the upstream saw (after a 200).
async fn forwarded_for(gw: &TestGateway, up: &Upstream, headers: &[&str]) -> String {
    let before = up.count();
    let resp = raw(gw.addr, &get("/echo", headers), WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.count(), before + 1);
    up.last().headers["x-forwarded-for"]
        .to_str()
        .unwrap()
        .to_string()
}

/// (request headers, X-Forwarded-For the upstream must see) for a listener that trusts
/// 127.0.0.1 and 10.0.0.0/8: the chain goes on with the peer appended.
const TRUSTED_CASES: &[(&[&str], &str)] = &[
    (&[], "127.0.0.1"),
    (
        &["X-Forwarded-For: 198.51.100.7"],
        "198.51.100.7, 127.0.0.1",
    ),
    (
        &[
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-For: 198.51.100.8, 10.0.0.2",
        ],
        "6.6.6.6, 198.51.100.8, 10.0.0.2, 127.0.0.1",
    ),
];

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_replaced() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config("", "", "", up.addr)).await;
    for headers in [
        &["X-Forwarded-For: 203.0.113.9"][..],
        &["X-Forwarded-For: 203.0.113.9", "X-Forwarded-For: 10.0.0.1"],
        &["Forwarded: for=203.0.113.9"],
        &["X-Forwarded-For: garbage, , 1.2.3.4:80"],
    ] {
        assert_eq!(
            forwarded_for(&gw, &up, headers).await,
            "127.0.0.1",
            "{headers:?}"
        );
        assert!(!up.last().headers.contains_key("forwarded"), "{headers:?}");
    }
}

/// The client address the gateway decided on is what IP rules see: a deny rule for the
/// decided client refuses the request, one for any other hop does not.
#[tokio::test]
async fn a_trusted_chain_decides_the_client_address_everywhere() {
    let up = Upstream::start("up").await;
    let listener = "    trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n    ip_rules: [blocked]\n";
    let top = "ip_rules:\n  - { name: blocked, deny: [198.51.100.66/32, \"2001:db8:bad::/48\"] }\n";
    let gw = TestGateway::start(&config(listener, top, "", up.addr)).await;
    for (headers, want) in TRUSTED_CASES {
        assert_eq!(forwarded_for(&gw, &up, headers).await, *want, "{headers:?}");
    }
    // (headers, refused?) — the client is the first untrusted address from the right.
    let cases: &[(&[&str], bool)] = &[
        (&["X-Forwarded-For: 198.51.100.66"], true),
        (&["X-Forwarded-For: 198.51.100.66, 10.1.2.3"], true),
        // An untrusted hop in the middle is the client; what is left of it is not read.
        (
            &["X-Forwarded-For: 198.51.100.66, 203.0.113.1, 10.1.2.3"],
            false,
        ),
        (&["X-Forwarded-For: 198.51.100.66:4711"], true),
        (
            &["Forwarded: for=\"[2001:db8:bad::1]:4711\";proto=https"],
            true,
        ),
        (&["Forwarded: for=\"[2001:db8:900d::1]:4711\""], false),
        (&["Forwarded: for=198.51.100.66, for=10.0.0.5"], true),
        // Auto: X-Forwarded-For wins when both are present.
        (
            &[
                "Forwarded: for=198.51.100.66",
                "X-Forwarded-For: 203.0.113.2",
            ],
            false,
        ),
        (&["X-Forwarded-For: ::ffff:198.51.100.66"], true),
    ];
    for (headers, refused) in cases {
        let before = up.count();
        let resp = raw(gw.addr, &get("/echo", headers), WAIT).await;
        if *refused {
            assert_eq!(raw_status(&resp), 403, "{headers:?}: {resp}");
            let j = raw_json(&resp);
            assert_eq!(
                j["error"], "forbidden: client address not allowed",
                "{resp}"
            );
            assert!(j["request_id"].is_string());
            assert_eq!(up.count(), before, "a refused request reached the upstream");
        } else {
            assert_eq!(raw_status(&resp), 200, "{headers:?}: {resp}");
        }
    }
    let metrics = admin_metrics(&gw).await;
    assert!(
        metrics.contains("portcullis_ip_rule_refused_total{rule=\"blocked\"} 6"),
        "{metrics}"
    );
}

async fn admin_metrics(gw: &TestGateway) -> String {
    let resp = raw(
        gw.admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    resp
}

fn v2_header(src: [u8; 4], port: u16, tlvs: &[u8], local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(if local { 0x00 } else { 0x11 });
    let addrs: Vec<u8> = if local {
        Vec::new()
    } else {
        let mut a = src.to_vec();
        a.extend_from_slice(&[127, 0, 0, 1]);
        a.extend_from_slice(&port.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    };
    h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h.extend_from_slice(tlvs);
    h
}

async fn send_parts(gw: &TestGateway, parts: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn proxy_protocol_gives_the_client_address_and_is_required() {
    let up = Upstream::start("up").await;
    let listener = "    proxy_protocol: any\n    limits: { header_read_timeout_ms: 300 }\n";
    let gw = TestGateway::start(&config(listener, "", "", up.addr)).await;
    let req = get("/echo", &["X-Forwarded-For: 6.6.6.6"]);

    // v1, the header split across packets.
    let resp = send_parts(
        &gw,
        &[
            b"PROXY TCP4 192.0.",
            b"2.10 127.0.0.1 5000 80\r",
            b"\n",
            &req,
        ],
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["x-forwarded-for"], "192.0.2.10");

    // v2 with TLVs (authority, a NOOP), then the request in the same packet.
    let tlvs = [0x02, 0, 3, b'a', b'p', b'i', 0x04, 0, 1, 0];
    let mut bytes = v2_header([198, 51, 100, 20], 6000, &tlvs, false);
    bytes.extend_from_slice(&req);
    let resp = send_parts(&gw, &[&bytes]).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["x-forwarded-for"], "198.51.100.20");

    // v2 LOCAL (the balancer's health check): the connection's own peer.
    let mut bytes = v2_header([0; 4], 0, &[], true);
    bytes.extend_from_slice(&req);
    let resp = send_parts(&gw, &[&bytes]).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");

    // No header: closed without an answer, nothing upstream. Also a bad v2 signature, a v1
    // line without CRLF within 107 bytes, and silence past the header read timeout.
    let before = up.count();
    let mut bad_sig = v2_header([198, 51, 100, 20], 6000, &[], false);
    bad_sig[6] = b'X';
    let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    for parts in [
        vec![&req[..]],
        vec![&bad_sig[..], &req[..]],
        vec![long_v1.as_bytes(), &req[..]],
    ] {
        let resp = send_parts(&gw, &parts).await;
        assert_eq!(
            resp, "",
            "a connection without a valid PROXY header got an answer"
        );
    }
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("a silent connection must be closed at the header read timeout");
    assert_eq!(n.unwrap_or(0), 0);
    assert_eq!(up.count(), before, "nothing reached the upstream");
}

#[tokio::test]
async fn a_proxy_header_on_a_listener_without_proxy_protocol_is_a_bad_request() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config("", "", "", up.addr)).await;
    let mut v1 = b"PROXY TCP4 192.0.2.10 127.0.0.1 5000 80\r\n".to_vec();
    v1.extend_from_slice(&get("/echo", &[]));
    let resp = send_parts(&gw, &[&v1]).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let mut v2 = v2_header([198, 51, 100, 20], 6000, &[], false);
    v2.extend_from_slice(&get("/echo", &[]));
    let resp = send_parts(&gw, &[&v2]).await;
    assert!(resp.is_empty() || raw_status(&resp) == 400, "{resp}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn built_in_rules_refuse_before_routing_and_name_the_rule() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config("", "", "", up.addr)).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/a/../etc/passwd", 400, "path-traversal"),
        ("GET", "/a/%2e%2e/etc/passwd", 400, "encoded-traversal"),
        ("GET", "/a/%252e%252e/etc", 400, "encoded-traversal"),
        ("GET", "/a/%c0%ae%c0%ae/etc", 400, "overlong-utf8"),
        ("GET", "/a%00.json", 400, "control-bytes"),
        ("TRACE", "/echo", 405, "method-not-allowed"),
    ];
    for (method, path, status, rule) in cases {
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n");
        let resp = raw(gw.addr, req.as_bytes(), WAIT).await;
        assert_eq!(raw_status(&resp), *status, "{method} {path}: {resp}");
        assert!(raw_json(&resp)["request_id"].is_string(), "{resp}");
        if *status == 405 {
            assert!(
                resp.to_ascii_lowercase()
                    .contains("allow: get, head, post, put, patch, delete, options"),
                "{resp}"
            );
        }
        let metrics = admin_metrics(&gw).await;
        assert!(
            metrics.contains(&format!(
                "portcullis_edge_rule_matches_total{{rule=\"{rule}\",outcome=\"denied\"}}"
            )),
            "{rule}: {metrics}"
        );
    }
    let mut many = String::from("GET /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for i in 0..120 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw(gw.addr, many.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    // Clean requests pass.
    let resp = raw(gw.addr, &get("/a/b..c/caf%C3%A9", &[]), WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
}

#[tokio::test]
async fn configurable_rules_deny_log_and_report_only() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let bots = dir.path().join("bots.txt");
    std::fs::write(&bots, "# bad bots\nsqlmap\nnikto/\\d+\n\n").unwrap();
    let top = format!(
        "edge_rules:\n  rules:\n    - {{ name: bad-bots, user_agent_file: \"{}\" }}\n    - {{ name: no-union, query: \"(?i)union\\\\s+select\" }}\n    - {{ name: needs-version, header: {{ name: x-api-version, absent: true }}, path: \"^/v1/\" }}\n    - {{ name: watch-debug, header: {{ name: x-debug, present: true }}, action: log }}\n",
        bots.display()
    );
    let gw = TestGateway::start(&config("", &top, "", up.addr)).await;
    let cases: &[(&str, &[&str], u16)] = &[
        ("/echo", &["User-Agent: sqlmap/1.7"], 403),
        ("/echo", &["User-Agent: Nikto/2"], 403),
        ("/echo", &["User-Agent: curl/8"], 200),
        ("/echo?q=1%20UNION%20SELECT", &[], 200),
        ("/echo?q=1 union  select", &[], 200),
        ("/v1/orders", &[], 403),
        ("/v1/orders", &["x-api-version: 2"], 200),
        ("/echo", &["x-debug: 1"], 200),
    ];
    for (path, headers, status) in cases {
        let before = up.count();
        let resp = raw(gw.addr, &get(path, headers), WAIT).await;
        let got = raw_status(&resp);
        if *path == "/echo?q=1 union  select" {
            // A raw space is not a valid request target: refused by the parser either way.
            assert_eq!(got, 400, "{resp}");
            continue;
        }
        assert_eq!(got, *status, "{path} {headers:?}: {resp}");
        if *status == 403 {
            assert_eq!(raw_json(&resp)["error"], "forbidden by request rules");
            assert_eq!(up.count(), before);
        }
    }
    let resp = raw(gw.addr, &get("/echo?q=1+union+select+x", &[]), WAIT).await;
    assert_eq!(
        raw_status(&resp),
        200,
        "`+` is not whitespace to the regex: {resp}"
    );
    let resp = raw(gw.addr, &get("/echo?q=1%20union%0aselect", &[]), WAIT).await;
    assert_eq!(
        raw_status(&resp),
        200,
        "the query regex sees the raw query: {resp}"
    );
    let metrics = admin_metrics(&gw).await;
    for line in [
        "portcullis_edge_rule_matches_total{rule=\"bad-bots\",outcome=\"denied\"} 2",
        "portcullis_edge_rule_matches_total{rule=\"needs-version\",outcome=\"denied\"} 1",
        "portcullis_edge_rule_matches_total{rule=\"watch-debug\",outcome=\"logged\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }

    // Report-only: the same rules count what they would refuse, and refuse nothing.
    let top = top.replace("edge_rules:\n", "edge_rules:\n  mode: report_only\n");
    let gw = TestGateway::start(&config("", &top, "", up.addr)).await;
    for req in [get("/echo", &["User-Agent: sqlmap"]), get("/a/../b", &[])] {
        let resp = raw(gw.addr, &req, WAIT).await;
        assert_eq!(raw_status(&resp), 200, "{resp}");
    }
    let metrics = admin_metrics(&gw).await;
    assert!(
        metrics.contains(
            "portcullis_edge_rule_matches_total{rule=\"bad-bots\",outcome=\"report_only\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "portcullis_edge_rule_matches_total{rule=\"path-traversal\",outcome=\"report_only\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn route_ip_rules_from_files_and_bad_lists_are_config_errors() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("office.txt");
    std::fs::write(&list, "# office\n192.0.2.0/24 # hq\n127.0.0.1\n").unwrap();
    let top = format!(
        "ip_rules:\n  - {{ name: office, allow_file: \"{}\" }}\n",
        list.display()
    );
    let gw = TestGateway::start(&config("", &top, "    ip_rules: [office]\n", up.addr)).await;
    let resp = raw(gw.addr, &get("/echo", &[]), WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");

    // A reload with only the list changed swaps; 127.0.0.1 is now outside the allow list.
    std::fs::write(&list, "192.0.2.0/24\n").unwrap();
    gw.gateway.reload().await.expect("reload");
    let resp = raw(gw.addr, &get("/echo", &[]), WAIT).await;
    assert_eq!(raw_status(&resp), 403, "{resp}");

    // A bad entry names the list file and its line; the running config keeps serving.
    std::fs::write(&list, "192.0.2.0/24\n10.0.0.0/40\n").unwrap();
    let err = gw
        .gateway
        .reload()
        .await
        .expect_err("a bad list must refuse the reload");
    let text = err.to_string();
    assert!(
        text.contains("office.txt:2: `10.0.0.0/40` is not a CIDR"),
        "{text}"
    );
    let resp = raw(gw.addr, &get("/echo", &[]), WAIT).await;
    assert_eq!(raw_status(&resp), 403, "{resp}");
}

/// The access log records the address the gateway decided on and the rule that decided.
#[tokio::test]
async fn the_access_log_has_the_client_address_and_the_rule() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let listener = "    trusted_proxies: [127.0.0.1/32]\n    ip_rules: [blocked]\n";
    let top = format!(
        "ip_rules:\n  - {{ name: blocked, deny: [198.51.100.66] }}\nedge_rules:\n  rules:\n    - {{ name: watch, header: {{ name: x-debug, present: true }}, action: log }}\nobservability:\n  access_log: {{ destination: \"{}\" }}\n",
        log.display()
    );
    let gw = TestGateway::start(&config(listener, &top, "", up.addr)).await;
    let sent: [(Vec<u8>, u16); 4] = [
        (
            get("/echo", &["X-Forwarded-For: 6.6.6.6, 203.0.113.5"]),
            200,
        ),
        (get("/echo", &["X-Forwarded-For: 198.51.100.66"]), 403),
        (get("/a/../b", &[]), 400),
        (get("/echo", &["x-debug: 1"]), 200),
    ];
    for (req, status) in &sent {
        assert_eq!(raw_status(&raw(gw.addr, req, WAIT).await), *status);
    }
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["client_ip"], "203.0.113.5");
    assert!(lines[0].get("rule").is_none(), "{}", lines[0]);
    assert_eq!(lines[1]["client_ip"], "198.51.100.66");
    assert_eq!(lines[1]["rule"], "ip:blocked");
    assert_eq!(lines[2]["rule"], "path-traversal");
    assert_eq!(lines[3]["rule"], "watch:log");
    assert_eq!(lines[3]["client_ip"], "127.0.0.1");
}
