//! Signed partner requests (RFC 9421) end to end: requests signed by an independent signer
//! (tests/signer/sign.py on Debian's python3-cryptography) for every algorithm, the adversarial
//! cases (each a 401 with its reason that never reaches the upstream), the body bound by its
//! Content-Digest as it streams, and nonces refused across two gateways sharing Redis and
//! after a restart.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use support::*;

const ALGS: [&str; 6] = [
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
    "hmac-sha256",
];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the signer with Debian's Python (a missing python3-cryptography fails loudly).
fn signer(args: &[&str], stdin: Option<&Value>) -> Value {
    use std::io::Write;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/signer/sign.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs (scripts/test installs python3-cryptography)");
    if let Some(v) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(v.to_string().as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One partner key: what the signer needs and what the gateway config says.
struct PartnerKey {
    id: String,
    alg: &'static str,
    secret: Value,
    config: String,
}

fn partner_key(alg: &'static str, dir: &std::path::Path) -> PartnerKey {
    let k = signer(&["keygen", alg], None);
    let id = format!("key-{alg}");
    let (secret, config) = if alg == "hmac-sha256" {
        let s = k["secret"].as_str().unwrap().to_string();
        (
            json!({ "secret": s }),
            format!("{{ id: {id}, alg: {alg}, secret_base64: \"{s}\", tenant: acme, scopes: [orders:write] }}"),
        )
    } else {
        let path = dir.join(format!("{alg}.pub.pem"));
        std::fs::write(&path, k["public"].as_str().unwrap()).unwrap();
        (
            json!({ "private": k["private"] }),
            format!(
                "{{ id: {id}, alg: {alg}, key_file: \"{}\", tenant: acme, scopes: [orders:write] }}",
                path.display()
            ),
        )
    };
    PartnerKey {
        id,
        alg,
        secret,
        config,
    }
}

fn config(up: &Upstream, keys: &[&PartnerKey], replay: &str, redis: &str) -> String {
    let keys: Vec<&str> = keys.iter().map(|k| k.config.as_str()).collect();
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
{redis}auth:
  signatures:
    - name: partners
      keys: [{}]
      required_components: ["@method", "@authority", "@path", "@query"]
      max_age_s: 300
      require_nonce: true
      replay: {replay}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
routes:
  - name: orders
    match: {{ path: {{ prefix: /v1/orders }} }}
    auth: {{ signature: partners }}
    authorization: {{ required_scopes: [orders:write] }}
    upstream: up
"#,
        keys.join(", "),
        up.addr
    )
}

/// What to sign and how to send it.
struct Signed {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    body: Vec<u8>,
    covered: Vec<&'static str>,
    created: i64,
    nonce: String,
    send_alg: Option<&'static str>,
    label: &'static str,
}

impl Signed {
    fn post(body: &[u8]) -> Signed {
        Signed {
            method: "POST",
            path: "/v1/orders",
            query: Some("expand=items"),
            body: body.to_vec(),
            covered: vec!["@method", "@authority", "@path", "@query", "content-digest"],
            created: now(),
            nonce: format!("n-{}", fastrand::u64(..)),
            send_alg: None,
            label: "sig1",
        }
    }

    /// The signer's headers (`signature-input`, `signature`, `content-digest`) for `key`,
    /// sent to the gateway at `authority`.
    fn sign(&self, key: &PartnerKey, authority: &str) -> Value {
        let mut r = json!({
            "alg": key.alg, "keyid": key.id, "label": self.label,
            "method": self.method, "scheme": "http", "authority": authority,
            "path": self.path, "query": self.query,
            "covered": self.covered, "created": self.created, "nonce": self.nonce,
            "send_alg": self.send_alg, "body_b64": STANDARD.encode(&self.body),
        });
        r["headers"] = json!([]);
        for (k, v) in key.secret.as_object().unwrap() {
            r[k] = v.clone();
        }
        signer(&["sign"], Some(&r))
    }
}

/// Sends `body` with the signed headers (each may be replaced or left out).
async fn send_signed(
    gw: &TestGateway,
    s: &Signed,
    signed: &Value,
    body: &[u8],
    skip: &[&str],
) -> Reply {
    let target = match s.query {
        Some(q) => format!("{}?{q}", s.path),
        None => s.path.to_string(),
    };
    let mut b = Request::builder().method(s.method).uri(gw.url(&target));
    for h in ["signature-input", "signature", "content-digest"] {
        if !skip.contains(&h) && (h != "content-digest" || s.covered.contains(&h)) {
            b = b.header(h, signed[h].as_str().unwrap());
        }
    }
    send(
        &client(),
        b.body(Full::new(Bytes::copy_from_slice(body))).unwrap(),
    )
    .await
}

async fn failures(gw: &TestGateway, reason: &str) -> u64 {
    let m = get(&client(), &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    let needle =
        format!("portcullis_auth_failures_total{{provider=\"partners\",reason=\"{reason}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no {needle} in metrics"))
}

#[tokio::test]
async fn requests_signed_by_an_independent_signer_are_accepted_for_every_algorithm() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<PartnerKey> = ALGS.iter().map(|a| partner_key(a, dir.path())).collect();
    let gw = TestGateway::start(&config(
        &up,
        &keys.iter().collect::<Vec<_>>(),
        "{ store: local }",
        "",
    ))
    .await;
    let authority = gw.addr.to_string();
    for key in &keys {
        let s = Signed::post(br#"{"item":"widget","qty":2}"#);
        let signed = s.sign(key, &authority);
        let before = up.count();
        let r = send_signed(&gw, &s, &signed, &s.body, &[]).await;
        assert_eq!(r.status, 200, "{}: {}", key.alg, r.text());
        assert_eq!(up.count(), before + 1);
        let seen = up.last();
        assert_eq!(
            seen.body_len,
            s.body.len() as u64,
            "{}: the whole body arrived",
            key.alg
        );
        assert!(
            seen.headers.contains_key("signature"),
            "signature fields pass on"
        );
        // A GET with no body needs no digest.
        let mut g = Signed::post(b"");
        g.method = "GET";
        g.covered = vec!["@method", "@authority", "@path", "@query"];
        let signed = g.sign(key, &authority);
        let r = send_signed(&gw, &g, &signed, b"", &[]).await;
        assert_eq!(r.status, 200, "{} GET: {}", key.alg, r.text());
    }
}

#[tokio::test]
async fn adversarial_requests_are_refused_with_their_reason_and_never_reach_the_upstream() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = partner_key("ed25519", dir.path());
    let hmac = partner_key("hmac-sha256", dir.path());
    let gw = TestGateway::start(&config(&up, &[&ed, &hmac], "{ store: local }", "")).await;
    let authority = gw.addr.to_string();
    let body = br#"{"item":"widget"}"#;

    struct Case {
        name: &'static str,
        reason: &'static str,
        signed: Signed,
        key: &'static str,
        send_body: Vec<u8>,
        skip: Vec<&'static str>,
        edit: fn(&mut Value),
    }
    let base = || Signed::post(body);
    let mut cases = vec![
        Case {
            name: "no signature",
            reason: "missing_credentials",
            signed: base(),
            key: "ed",
            send_body: body.to_vec(),
            skip: vec!["signature", "signature-input"],
            edit: |_| {},
        },
        Case {
            name: "digest covered, header missing",
            reason: "missing_digest",
            signed: base(),
            key: "ed",
            send_body: body.to_vec(),
            skip: vec!["content-digest"],
            edit: |_| {},
        },
        Case {
            name: "body without a covered digest",
            reason: "component_not_covered",
            signed: Signed {
                covered: vec!["@method", "@authority", "@path", "@query"],
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "created 10 minutes ago",
            reason: "expired",
            signed: Signed {
                created: now() - 600,
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "created in the future",
            reason: "issued_in_future",
            signed: Signed {
                created: now() + 600,
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "unknown key id",
            reason: "unknown_key",
            signed: base(),
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |v| {
                let s = v["signature-input"]
                    .as_str()
                    .unwrap()
                    .replace("key-ed25519", "key-nobody");
                v["signature-input"] = s.into();
            },
        },
        Case {
            name: "alg differs from the key's",
            reason: "algorithm_not_allowed",
            signed: Signed {
                send_alg: Some("ecdsa-p256-sha256"),
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "duplicated labels",
            reason: "malformed",
            signed: base(),
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |v| {
                let s = v["signature-input"].as_str().unwrap().to_string();
                v["signature-input"] = format!("{s}, {s}").into();
            },
        },
        Case {
            name: "malformed structured field",
            reason: "malformed",
            signed: base(),
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |v| {
                let s = v["signature-input"].as_str().unwrap().replacen(')', "", 1);
                v["signature-input"] = s.into();
            },
        },
        Case {
            name: "fewer components than required",
            reason: "component_not_covered",
            signed: Signed {
                covered: vec!["@method", "@authority", "@path", "content-digest"],
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "no nonce",
            reason: "missing_nonce",
            signed: Signed {
                nonce: String::new(),
                ..base()
            },
            key: "ed",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |_| {},
        },
        Case {
            name: "a tampered signature",
            reason: "bad_signature",
            signed: base(),
            key: "hmac",
            send_body: body.to_vec(),
            skip: vec![],
            edit: |v| {
                let s = v["signature"].as_str().unwrap().replacen(":", ":AAAA", 1);
                v["signature"] = s.into();
            },
        },
    ];
    // The HMAC-with-a-public-key confusion: the signer holds only the Ed25519 public key.
    let public_pem = std::fs::read_to_string(dir.path().join("ed25519.pub.pem")).unwrap();
    let confused = PartnerKey {
        id: ed.id.clone(),
        alg: "hmac-sha256",
        secret: json!({ "secret": STANDARD.encode(public_pem.as_bytes()) }),
        config: String::new(),
    };
    for (with_alg, reason) in [(true, "algorithm_not_allowed"), (false, "bad_signature")] {
        let s = Signed {
            send_alg: with_alg.then_some("hmac-sha256"),
            ..base()
        };
        let signed = s.sign(&confused, &authority);
        let before = (
            failures(&gw, reason).await,
            up.arrivals.load(Ordering::SeqCst),
        );
        let r = send_signed(&gw, &s, &signed, body, &[]).await;
        r.assert_gateway_error(401);
        assert!(r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Signature"));
        assert_eq!(
            failures(&gw, reason).await,
            before.0 + 1,
            "hmac over a public key, alg {with_alg}"
        );
        assert_eq!(up.arrivals.load(Ordering::SeqCst), before.1);
    }
    for case in cases.drain(..) {
        let key = if case.key == "ed" { &ed } else { &hmac };
        let mut signed = case.signed.sign(key, &authority);
        (case.edit)(&mut signed);
        let before = (
            failures(&gw, case.reason).await,
            up.arrivals.load(Ordering::SeqCst),
        );
        let r = send_signed(&gw, &case.signed, &signed, &case.send_body, &case.skip).await;
        r.assert_gateway_error(401);
        assert_eq!(
            failures(&gw, case.reason).await,
            before.0 + 1,
            "{}: counted as {}",
            case.name,
            case.reason
        );
        assert_eq!(
            up.arrivals.load(Ordering::SeqCst),
            before.1,
            "{} reached the upstream",
            case.name
        );
    }

    // The digest of another body: refused as the body streams; the upstream may see the head
    // but never a complete request.
    let s = Signed::post(body);
    let signed = s.sign(&ed, &authority);
    let (uploads, seen) = (up.completed_uploads.load(Ordering::SeqCst), up.count());
    let before = failures(&gw, "digest_mismatch").await;
    let r = send_signed(&gw, &s, &signed, br#"{"item":"WIDGET"}"#, &[]).await;
    r.assert_gateway_error(401);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("content-digest"),
        "{}",
        r.text()
    );
    assert_eq!(failures(&gw, "digest_mismatch").await, before + 1);
    assert_eq!(
        up.completed_uploads.load(Ordering::SeqCst),
        uploads,
        "no complete body upstream"
    );
    assert_eq!(up.count(), seen);
    // The same signed headers with the right body still pass (nonce unused: it failed first).
    let s2 = Signed::post(body);
    let signed = s2.sign(&ed, &authority);
    let r = send_signed(&gw, &s2, &signed, body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_replayed_request_is_refused_across_two_gateways_sharing_redis_and_after_a_restart() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let key = partner_key("ed25519", dir.path());
    let redis_cfg = format!("redis: {{ url: \"{}\" }}\n", redis.url());
    let cfg = config(&up, &[&key], "{ store: redis }", &redis_cfg);
    let a = TestGateway::start(&cfg).await;
    let b = TestGateway::start(&cfg).await;
    // Both gateways are reached under one name, as behind a load balancer.
    let authority = "partners.example";
    let s = Signed::post(br#"{"item":"widget"}"#);
    let signed = s.sign(&key, authority);
    let http = client();
    let send_to = |gw: &TestGateway| {
        let target = format!("{}?{}", s.path, s.query.unwrap());
        let req = Request::post(gw.url(&target))
            .header("host", authority)
            .header(
                "signature-input",
                signed["signature-input"].as_str().unwrap(),
            )
            .header("signature", signed["signature"].as_str().unwrap())
            .header("content-digest", signed["content-digest"].as_str().unwrap())
            .body(Full::new(Bytes::copy_from_slice(&s.body)))
            .unwrap();
        send(&http, req)
    };
    let r = send_to(&a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 0..1000 {
        let gw = if i % 2 == 0 { &b } else { &a };
        let r = send_to(gw).await;
        assert_eq!(r.status, 401, "replay {i}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("nonce"));
    }
    assert_eq!(up.count(), 1, "only the first request reached the upstream");
    assert_eq!(
        failures(&a, "replayed").await + failures(&b, "replayed").await,
        1000
    );
    drop(a);
    let restarted = TestGateway::start(&cfg).await;
    let r = send_to(&restarted).await;
    assert_eq!(r.status, 401, "refused after a restart: {}", r.text());
    assert_eq!(up.count(), 1);
    drop(redis);
}

#[tokio::test]
async fn a_local_replay_table_refuses_a_second_use_in_one_gateway() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let key = partner_key("hmac-sha256", dir.path());
    let gw = TestGateway::start(&config(&up, &[&key], "{ store: local }", "")).await;
    let s = Signed::post(b"{}");
    let signed = s.sign(&key, &gw.addr.to_string());
    assert_eq!(
        send_signed(&gw, &s, &signed, &s.body, &[]).await.status,
        200
    );
    let r = send_signed(&gw, &s, &signed, &s.body, &[]).await;
    r.assert_gateway_error(401);
    assert_eq!(failures(&gw, "replayed").await, 1);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_signing_key_maps_to_its_consumer_whose_plan_limits_apply() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let mut key = partner_key("ed25519", dir.path());
    key.config = key
        .config
        .replace("tenant: acme", "tenant: acme, consumer: acme-app");
    let yaml = config(&up, &[&key], "{ store: local }", "")
        .replace(
            "auth:\n",
            "consumers: [{ id: acme-app, plan: tiny }]\nplans:\n  - name: tiny\n    limits: [{ name: per-hour, algorithm: sliding_window, limit: 2, window_s: 3600 }]\nauth:\n",
        )
        .replace("    upstream: up\n", "    upstream: up\n    rate_limits: [{ by_plan: true }]\n");
    let gw = TestGateway::start(&yaml).await;
    let authority = gw.addr.to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut g = Signed::post(b"");
        g.method = "GET";
        g.covered = vec!["@method", "@authority", "@path", "@query"];
        let signed = g.sign(&key, &authority);
        let r = send_signed(&gw, &g, &signed, b"", &[]).await;
        if r.status == 200 {
            assert_eq!(
                r.headers["ratelimit-policy"],
                "\"tiny/per-hour\";q=2;w=3600"
            );
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}
