//! Authentication and authorization end to end: API keys, JWT with every supported algorithm,
//! the attack cases (each a 401 that never reaches the upstream), JWKS rotation against an IdP
//! the test controls (new kids, unknown-kid floods, IdP down, IdP garbage), scopes and claims,
//! identity-header spoofing, and the principal feeding rate-limit keys.
//! Its tests run one at a time (each takes `ALONE` first): cache lifetimes, refetch windows and
//! the introspection timeout are timed.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public JWK.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa_key(alg: Algorithm, kid: &str) -> SigningKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    SigningKey {
        alg,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({ "kty": "RSA", "kid": kid, "use": "sig",
            "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be()) }),
    }
}

fn ec_key(alg: Algorithm, kid: &str) -> SigningKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let (der, x, y, crv) = if alg == Algorithm::ES256 {
        let k = p256::SecretKey::random(&mut rand::thread_rng());
        let p = k.public_key().to_encoded_point(false);
        (
            k.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            b64(p.x().unwrap()),
            b64(p.y().unwrap()),
            "P-256",
        )
    } else {
        let k = p384::SecretKey::random(&mut rand::thread_rng());
        let p = k.public_key().to_encoded_point(false);
        (
            k.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            b64(p.x().unwrap()),
            b64(p.y().unwrap()),
            "P-384",
        )
    };
    SigningKey {
        alg,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(&der),
        jwk: json!({ "kty": "EC", "kid": kid, "crv": crv, "x": x, "y": y }),
    }
}

fn ed_key(kid: &str) -> SigningKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let k = ed25519_dalek::SigningKey::generate(&mut rand::thread_rng());
    SigningKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(k.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({ "kty": "OKP", "kid": kid, "crv": "Ed25519",
            "x": b64(k.verifying_key().as_bytes()) }),
    }
}

fn claims() -> serde_json::Value {
    json!({ "sub": "user-1", "iss": "https://idp.test", "aud": "api", "exp": now() + 600,
        "iat": now(), "tenant_id": "acme", "scope": "orders:read orders:write",
        // Unique per token, so the verified-token cache never answers for a test.
        "jti": rand::random::<u64>().to_string() })
}

fn sign(key: &SigningKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

fn hs(alg: Algorithm, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token assembled by hand (for headers and signatures no library would produce).
fn raw_token(header: &serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

/// An IdP publishing a JWKS that the test changes, breaks and counts.
struct Idp {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    /// 0 = serve, 1 = 503, 2 = garbage.
    mode: Arc<AtomicU64>,
    fetches: Arc<AtomicU64>,
}

impl Idp {
    async fn start(keys: &[&SigningKey]) -> Idp {
        let jwks = Arc::new(Mutex::new(String::new()));
        let mode: Arc<AtomicU64> = Arc::default();
        let fetches: Arc<AtomicU64> = Arc::default();
        let (j, m, f) = (Arc::clone(&jwks), Arc::clone(&mode), Arc::clone(&fetches));
        let addr = serve_on("127.0.0.1:0".parse().unwrap(), move |_req| {
            f.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match m.load(Ordering::SeqCst) {
                0 => (200, j.lock().unwrap().clone()),
                1 => (503, "down".to_string()),
                _ => (200, "{\"keys\": [garbage".to_string()),
            };
            async move { respond(status, body) }
        })
        .await;
        let idp = Idp {
            addr,
            jwks,
            mode,
            fetches,
        };
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<&serde_json::Value> = keys.iter().map(|k| &k.jwk).collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys }).to_string();
    }
}

fn api_key_sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn config(up: &Upstream, idp: &Idp, algs: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
auth:
  jwt:
    - name: idp
      jwks_url: http://{idp}/jwks.json
      issuer: https://idp.test
      audiences: [api, other]
      algorithms: [{algs}]
      jwks_min_refetch_s: 2
      forward_claims: {{ sub: X-User-Id, tenant_id: X-Tenant-Id }}
    - name: shared
      secret: "{SECRET}"
      algorithms: [HS256, HS384, HS512]
      issuer: https://idp.test
      audiences: [api]
  api_keys:
    - name: partners
      keys:
        - {{ id: acme-key, sha256: {acme}, tenant: acme, scopes: [orders:read] }}
        - {{ id: globex-key, sha256: {globex}, tenant: globex, scopes: [orders:read, orders:write] }}
rate_limits:
  - {{ name: per-tenant, algorithm: token_bucket, capacity: 3, refill_per_second: 0.001, key: [tenant] }}
upstreams:
  - {{ name: up, targets: [{{ address: "{up}" }}] }}
routes:
  - name: jwt
    match: {{ path: {{ prefix: /jwt }} }}
    upstream: up
    auth: {{ jwt: idp }}
  - name: hs
    match: {{ path: {{ prefix: /hs }} }}
    upstream: up
    auth: {{ jwt: shared }}
  - name: keys
    match: {{ path: {{ prefix: /keys }} }}
    upstream: up
    auth: {{ api_key: partners }}
    rate_limits: [per-tenant]
  - name: either
    match: {{ path: {{ prefix: /either }} }}
    upstream: up
    auth: {{ any: [{{ jwt: idp }}, {{ api_key: partners }}] }}
  - name: write
    match: {{ path: {{ prefix: /write }} }}
    upstream: up
    auth: {{ any: [{{ jwt: idp }}, {{ api_key: partners }}] }}
    authorization: {{ required_scopes: [orders:write] }}
  - name: acme-only
    match: {{ path: {{ prefix: /acme }} }}
    upstream: up
    auth: {{ jwt: idp }}
    authorization: {{ required_claims: {{ tenant_id: [acme] }} }}
  - name: public
    match: {{ path: {{ prefix: /public }} }}
    upstream: up
"#,
        idp = idp.addr,
        up = up.addr,
        acme = api_key_sha("acme-secret-key"),
        globex = api_key_sha("globex-secret-key"),
    )
}

async fn call(c: &HttpClient, gw: &TestGateway, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("x-user-id", "spoofed"), ("x-tenant-id", "spoofed")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    get(c, &gw.url(path), &headers).await
}

#[tokio::test]
async fn every_algorithm_is_accepted_and_claims_are_forwarded_not_spoofed() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let keys = vec![
        rsa_key(Algorithm::RS256, "rs256"),
        rsa_key(Algorithm::RS384, "rs384"),
        rsa_key(Algorithm::RS512, "rs512"),
        rsa_key(Algorithm::PS256, "ps256"),
        rsa_key(Algorithm::PS384, "ps384"),
        rsa_key(Algorithm::PS512, "ps512"),
        ec_key(Algorithm::ES256, "es256"),
        ec_key(Algorithm::ES384, "es384"),
        ed_key("eddsa"),
    ];
    let idp = Idp::start(&keys.iter().collect::<Vec<_>>()).await;
    let gw = TestGateway::start(&config(
        &up,
        &idp,
        "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
    ))
    .await;
    let c = client();
    for k in &keys {
        let r = call(&c, &gw, "/jwt/x", Some(&sign(k, &claims()))).await;
        assert_eq!(r.status, 200, "{:?}: {}", k.alg, r.text());
        let seen = up.last();
        assert_eq!(seen.headers["x-user-id"], "user-1", "{:?}", k.alg);
        assert_eq!(seen.headers["x-tenant-id"], "acme");
        assert!(
            seen.headers.get("authorization").is_none(),
            "credentials stay at the gateway"
        );
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let r = call(&c, &gw, "/hs/x", Some(&hs(alg, &claims()))).await;
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
    }
    // Spoofed identity headers never reach the upstream: not on a public route, not on a route
    // of another provider.
    assert_eq!(call(&c, &gw, "/public", None).await.status, 200);
    assert!(up.last().headers.get("x-user-id").is_none());
    assert!(up.last().headers.get("x-tenant-id").is_none());
    assert_eq!(
        call(&c, &gw, "/hs/x", Some(&hs(Algorithm::HS256, &claims())))
            .await
            .status,
        200
    );
    assert!(up.last().headers.get("x-user-id").is_none());
}

#[tokio::test]
async fn attacks_are_401_and_never_reach_the_upstream() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let rs = rsa_key(Algorithm::RS256, "main");
    let es = ec_key(Algorithm::ES256, "ec");
    let idp = Idp::start(&[&rs, &es]).await;
    let gw = TestGateway::start(&config(&up, &idp, "RS256")).await;
    let c = client();
    let good = sign(&rs, &claims());
    assert_eq!(call(&c, &gw, "/jwt", Some(&good)).await.status, 200);
    let before = up.count();

    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut cl = claims();
        f(&mut cl);
        sign(&rs, &cl)
    };
    let parts: Vec<&str> = good.split('.').collect();
    // An attacker's key, and a server publishing it that the gateway must never ask.
    let attacker = rsa_key(Algorithm::RS256, "attacker");
    let attacker_hits: Arc<AtomicU64> = Arc::default();
    let attacker_jwks = {
        let hits = Arc::clone(&attacker_hits);
        let body = json!({ "keys": [attacker.jwk.clone()] }).to_string();
        serve_on("127.0.0.1:0".parse().unwrap(), move |_req| {
            hits.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { respond(200, body) }
        })
        .await
    };
    let attacker_token = |kid: &str, edit: &dyn Fn(&mut Header)| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        edit(&mut h);
        jsonwebtoken::encode(&h, &claims(), &attacker.encoding).unwrap()
    };
    let rs_public_pem = {
        // The RS256 → HS256 confusion: the RSA public key (as its JWK JSON and as n) used as
        // an HMAC secret.
        rs.jwk.to_string()
    };
    const EXPIRED: &str = "the token has expired";
    const NOT_YET: &str = "the token is not valid yet";
    const FUTURE: &str = "the token was issued in the future";
    const ISSUER: &str = "the token's issuer is not accepted";
    const AUDIENCE: &str = "the token is not meant for this audience";
    const NO_EXP: &str = "the token has no expiry";
    const NOT_NUMBER: &str = "a time claim is not a number";
    const BAD_SIG: &str = "the token's signature is not valid";
    const MALFORMED: &str = "the token is malformed";
    const TOO_LARGE: &str = "the token is too large";
    const ALG: &str = "the token's algorithm is not allowed";
    const CRIT: &str = "the token has critical headers the gateway does not understand";
    const NO_KEY: &str = "no key for this token";
    let mut cases: Vec<(&str, &str, String)> = vec![
        (
            "expired",
            EXPIRED,
            with(&|c| c["exp"] = json!(now() - 3600)),
        ),
        (
            "not yet valid",
            NOT_YET,
            with(&|c| c["nbf"] = json!(now() + 3600)),
        ),
        (
            "future iat",
            FUTURE,
            with(&|c| c["iat"] = json!(now() + 3600)),
        ),
        (
            "wrong iss",
            ISSUER,
            with(&|c| c["iss"] = json!("https://evil.test")),
        ),
        (
            "wrong aud",
            AUDIENCE,
            with(&|c| c["aud"] = json!(["elsewhere"])),
        ),
        (
            "no exp",
            NO_EXP,
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "string exp",
            NOT_NUMBER,
            with(&|c| c["exp"] = json!((now() + 600).to_string())),
        ),
        (
            "bad signature",
            BAD_SIG,
            format!("{}.{}.{}", parts[0], parts[1], b64(b"not a signature")),
        ),
        (
            "other payload, same signature",
            BAD_SIG,
            format!(
                "{}.{}.{}",
                parts[0],
                b64(json!({"sub": "admin", "exp": now() + 600})
                    .to_string()
                    .as_bytes()),
                parts[2]
            ),
        ),
        // Cut inside the (long) RSA signature: three parts, a bad signature.
        ("truncated", BAD_SIG, good[..good.len() / 2].to_string()),
        ("garbage", MALFORMED, "a.b.c".into()),
        ("not base64", MALFORMED, "%%%.%%%.%%%".into()),
        ("two parts", MALFORMED, format!("{}.{}", parts[0], parts[1])),
        (
            "oversized",
            TOO_LARGE,
            with(&|c| c["pad"] = json!("x".repeat(9000))),
        ),
        (
            "alg not on the allow-list (ES256 with a published EC key)",
            ALG,
            sign(&es, &claims()),
        ),
        (
            "RS256 to HS256 confusion",
            ALG,
            jsonwebtoken::encode(
                &{
                    let mut h = Header::new(Algorithm::HS256);
                    h.kid = Some("main".into());
                    h
                },
                &claims(),
                &EncodingKey::from_secret(rs_public_pem.as_bytes()),
            )
            .unwrap(),
        ),
        (
            "unknown crit",
            CRIT,
            raw_token(
                &json!({"alg": "RS256", "kid": "main", "crit": ["exp"]}),
                &claims(),
                b"x",
            ),
        ),
        (
            // Signed by the attacker's own key, which the header carries: valid only if the
            // gateway trusted the embedded key.
            "embedded jwk (known kid)",
            BAD_SIG,
            attacker_token("main", &|h: &mut Header| {
                h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap())
            }),
        ),
        (
            "embedded jwk (attacker kid)",
            NO_KEY,
            attacker_token("attacker", &|h: &mut Header| {
                h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap())
            }),
        ),
        (
            "jku to an attacker",
            NO_KEY,
            attacker_token("attacker", &|h: &mut Header| {
                h.jku = Some(format!("http://{attacker_jwks}/jwks.json"))
            }),
        ),
        (
            "x5u to an attacker",
            NO_KEY,
            attacker_token("attacker", &|h: &mut Header| {
                h.x5u = Some(format!("http://{attacker_jwks}/cert.pem"))
            }),
        ),
    ];
    for none in ["none", "None", "NONE", "nOnE"] {
        cases.push((
            "alg none",
            ALG,
            format!(
                "{}.{}.",
                b64(json!({"alg": none, "kid": "main"}).to_string().as_bytes()),
                parts[1]
            ),
        ));
    }
    for (name, reason, token) in &cases {
        let r = call(&c, &gw, "/jwt", Some(token)).await;
        r.assert_gateway_error(401);
        // Refused for the reason the case is about, not by an earlier check.
        assert_eq!(
            r.json()["error"],
            format!("unauthorized: {reason}"),
            "{name}"
        );
        let challenge = r.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer "), "{name}: {challenge}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
    // No credentials at all: a challenge without an error code (RFC 6750 §3.1).
    let r = call(&c, &gw, "/jwt", None).await;
    r.assert_gateway_error(401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"portcullis\"");
    // An empty bearer token is no credential either.
    let r = call(&c, &gw, "/jwt", Some("")).await;
    r.assert_gateway_error(401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert_eq!(
        up.count(),
        before,
        "no refused request reached the upstream"
    );
    // A provider that allows RSA and EC algorithms: the allow-list no longer stops a token
    // that names one family's key and the other family's algorithm; the key's family must (a
    // JWKS key verifies only its own family). HMAC cannot be allowed on a JWKS provider at all
    // (a config error), so the HS256 confusion stays refused by the allow-list.
    let multi = TestGateway::start(&config(&up, &idp, "RS256, ES256")).await;
    assert_eq!(
        call(&c, &multi, "/jwt", Some(&sign(&es, &claims())))
            .await
            .status,
        200,
        "the EC key works on the multi-algorithm provider"
    );
    let before_multi = up.count();
    let confusion = &cases
        .iter()
        .find(|(name, _, _)| *name == "RS256 to HS256 confusion")
        .unwrap()
        .2;
    let rs_as_es = SigningKey {
        alg: Algorithm::ES256,
        kid: "main".into(),
        encoding: ec_key(Algorithm::ES256, "x").encoding,
        jwk: json!({}),
    };
    let es_as_rs = SigningKey {
        alg: Algorithm::RS256,
        kid: "ec".into(),
        encoding: rsa_key(Algorithm::RS256, "x").encoding,
        jwk: json!({}),
    };
    for (name, reason, token) in [
        ("RS256 to HS256 confusion", ALG, confusion.clone()),
        (
            "ES256 under the RSA key's kid",
            NO_KEY,
            sign(&rs_as_es, &claims()),
        ),
        (
            "RS256 under the EC key's kid",
            NO_KEY,
            sign(&es_as_rs, &claims()),
        ),
    ] {
        let r = call(&c, &multi, "/jwt", Some(&token)).await;
        r.assert_gateway_error(401);
        assert_eq!(
            r.json()["error"],
            format!("unauthorized: {reason}"),
            "{name}"
        );
    }
    assert_eq!(
        up.count(),
        before_multi,
        "a confused token reached the upstream"
    );

    // `jku` / `x5u` point at the attacker's server: fetching them would be an SSRF hole.
    assert_eq!(
        attacker_hits.load(Ordering::SeqCst),
        0,
        "the gateway fetched a URL named in a token header"
    );

    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    for reason in [
        "expired",
        "bad_signature",
        "algorithm_not_allowed",
        "too_large",
        "malformed",
        "unknown_crit",
        "missing_credentials",
    ] {
        let series =
            format!("portcullis_auth_failures_total{{provider=\"idp\",reason=\"{reason}\"}} ");
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"));
        assert!(n >= 1.0, "{reason}: {n}");
    }
}

#[tokio::test]
async fn jwks_rotation_unknown_kid_flood_and_idp_outages() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let old = ec_key(Algorithm::ES256, "old");
    let idp = Idp::start(&[&old]).await;
    let gw = TestGateway::start(&config(&up, &idp, "ES256")).await;
    let c = client();
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&old, &claims())))
            .await
            .status,
        200
    );

    // The IdP rotates: a token with the brand-new kid works at once, no restart.
    tokio::time::sleep(Duration::from_millis(2100)).await; // past jwks_min_refetch_s
    let new = ec_key(Algorithm::ES256, "new");
    idp.publish(&[&old, &new]);
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&new, &claims())))
            .await
            .status,
        200
    );

    // 1,000 concurrent tokens with random unknown kids, starting past the refetch window so
    // one fetch is allowed: single-flight makes it exactly one per jwks_min_refetch_s (2 s).
    // Each is its own connection, held on both ends in this process (and by other tests of
    // this binary running alongside): 4,096 open files covers it with room to spare.
    raise_fd_limit(4096);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = idp.fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let stranger = SigningKey {
            alg: Algorithm::ES256,
            kid: format!("unknown-{i}-{}", rand::random::<u32>()),
            encoding: EncodingKey::from_ec_der(&[]),
            jwk: json!({}),
        };
        let token = raw_token(
            &json!({"alg": "ES256", "kid": stranger.kid}),
            &claims(),
            &[7u8; 64],
        );
        let url = gw.url("/jwt");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let r = get(&c, &url, &[("authorization", &format!("Bearer {token}"))]).await;
            r.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let windows = started.elapsed().as_secs() / 2 + 1;
    let fetched = idp.fetches.load(Ordering::SeqCst) - before;
    // At least the one refetch an unknown kid allows (a gateway that never refetched would
    // have 0), at most one per window.
    assert!(
        (1..=windows).contains(&fetched),
        "{fetched} fetches in {:?}",
        started.elapsed()
    );

    // IdP down, then serving garbage: the cached keys keep working.
    idp.mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let unknown = raw_token(
        &json!({"alg": "ES256", "kid": "after-outage"}),
        &claims(),
        &[1u8; 64],
    );
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&unknown)).await.status,
        401,
        "forces a fetch"
    );
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&new, &claims())))
            .await
            .status,
        200
    );
    idp.mode.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let unknown = raw_token(
        &json!({"alg": "ES256", "kid": "after-garbage"}),
        &claims(),
        &[1u8; 64],
    );
    assert_eq!(call(&c, &gw, "/jwt", Some(&unknown)).await.status, 401);
    let fresh_claims = json!({ "sub": "user-2", "iss": "https://idp.test", "aud": "api", "exp": now() + 300,
        "jti": rand::random::<u64>().to_string() });
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&old, &fresh_claims)))
            .await
            .status,
        200
    );
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(metrics.contains("portcullis_jwks_fetches_total{provider=\"idp\",result=\"failed\"}"));
    assert!(
        !metrics.contains("portcullis_jwks_fetches_total{provider=\"idp\",result=\"failed\"} 0\n")
    );
}

#[tokio::test]
async fn api_keys_scopes_claims_and_tenant_rate_limits() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let rs = rsa_key(Algorithm::RS256, "main");
    let idp = Idp::start(&[&rs]).await;
    let gw = TestGateway::start(&config(&up, &idp, "RS256")).await;
    let c = client();
    // Accepted, the key itself never forwarded; unknown and missing keys refused.
    assert_eq!(
        with_key_on(&gw, "/keys", "acme-secret-key").await.status,
        200
    );
    assert!(up.last().headers.get("x-api-key").is_none());
    with_key_on(&gw, "/keys", "wrong-key")
        .await
        .assert_gateway_error(401);
    get(&c, &gw.url("/keys"), &[])
        .await
        .assert_gateway_error(401);

    // Tenant keys: acme exhausting its limit (3) does not touch globex's.
    let mut acme = 1; // one used above
    while with_key_on(&gw, "/keys", "acme-secret-key").await.status == 200 {
        acme += 1;
        assert!(acme < 10);
    }
    assert_eq!(acme, 3);
    for _ in 0..3 {
        assert_eq!(
            with_key_on(&gw, "/keys", "globex-secret-key").await.status,
            200
        );
    }
    assert_eq!(
        with_key_on(&gw, "/keys", "globex-secret-key").await.status,
        429
    );

    // Scopes: from an API key, from `scope`, from `scp`; missing → 403 insufficient_scope.
    let r = get_on(&gw, "/write", &[("x-api-key", "acme-secret-key")]).await;
    r.assert_gateway_error(403);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"orders:write\""
    );
    assert_eq!(
        get_on(&gw, "/write", &[("x-api-key", "globex-secret-key")])
            .await
            .status,
        200
    );
    let bearer = |t: String| format!("Bearer {t}");
    assert_eq!(
        get_on(
            &gw,
            "/write",
            &[("authorization", &bearer(sign(&rs, &claims())))]
        )
        .await
        .status,
        200
    );
    let mut scp = claims();
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["orders:write"]);
    assert_eq!(
        get_on(
            &gw,
            "/write",
            &[("authorization", &bearer(sign(&rs, &scp)))]
        )
        .await
        .status,
        200
    );
    let mut read_only = claims();
    read_only["scope"] = json!("orders:read");
    get_on(
        &gw,
        "/write",
        &[("authorization", &bearer(sign(&rs, &read_only)))],
    )
    .await
    .assert_gateway_error(403);

    // Claims: tenant_id must be acme.
    assert_eq!(
        call(&c, &gw, "/acme", Some(&sign(&rs, &claims())))
            .await
            .status,
        200
    );
    let mut other = claims();
    other["tenant_id"] = json!("globex");
    call(&c, &gw, "/acme", Some(&sign(&rs, &other)))
        .await
        .assert_gateway_error(403);

    // `any`: either credential works; a bad one is reported, not the missing other one.
    assert_eq!(
        with_key_on(&gw, "/either", "acme-secret-key").await.status,
        200
    );
    assert_eq!(
        call(&c, &gw, "/either", Some(&sign(&rs, &claims())))
            .await
            .status,
        200
    );
    let r = call(&c, &gw, "/either", Some("garbage")).await;
    r.assert_gateway_error(401);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("portcullis_authz_denials_total{route=\"write\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "portcullis_auth_failures_total{provider=\"partners\",reason=\"unknown_api_key\"} 1"
    ));
}

async fn get_on(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    get(&client(), &gw.url(path), headers).await
}

async fn with_key_on(gw: &TestGateway, path: &str, key: &str) -> Reply {
    get(&client(), &gw.url(path), &[("x-api-key", key)]).await
}

/// An RFC 7662 endpoint: `good-*` tokens are active, anything else inactive; it checks the
/// client's Basic credentials and counts calls. Mode 1 answers 503.
struct Introspector {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    mode: Arc<AtomicU64>,
}

impl Introspector {
    async fn start() -> Introspector {
        let calls: Arc<AtomicU64> = Arc::default();
        let mode: Arc<AtomicU64> = Arc::default();
        let (c, m) = (Arc::clone(&calls), Arc::clone(&mode));
        let addr = serve_on(
            "127.0.0.1:0".parse().unwrap(),
            move |req: http::Request<hyper::body::Incoming>| {
                let (c, m) = (Arc::clone(&c), Arc::clone(&m));
                async move {
                    use http_body_util::BodyExt;
                    c.fetch_add(1, Ordering::SeqCst);
                    let basic = req.headers()["authorization"].to_str().unwrap().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    let token = body
                        .split('&')
                        .find_map(|p| p.strip_prefix("token="))
                        .unwrap_or("")
                        .to_string();
                    let expected = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("gateway:s3cret")
                    );
                    let mode = m.load(Ordering::SeqCst);
                    if mode == 2 {
                        // Hung: answers long after any sane timeout.
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let (status, answer) = if mode == 1 {
                        (503, json!({}))
                    } else if basic != expected {
                        (401, json!({}))
                    } else if token.starts_with("good-") {
                        (
                            200,
                            json!({"active": true, "sub": "svc-1", "scope": "orders:read",
                                "exp": now() + 600, "tenant_id": "acme"}),
                        )
                    } else {
                        (200, json!({"active": false}))
                    };
                    respond(status, answer.to_string())
                }
            },
        )
        .await;
        Introspector { addr, calls, mode }
    }
}

#[tokio::test]
async fn introspection_caches_answers_and_never_allows_when_the_endpoint_is_down() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let intro = Introspector::start().await;
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
auth:
  introspection:
    - {{ name: opaque, endpoint: "http://{}/introspect", client_id: gateway, client_secret: s3cret, cache_s: 60, inactive_cache_s: 60, timeout_ms: 400 }}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: / }} }}
    upstream: up
    auth: {{ introspection: opaque }}
    authorization: {{ required_scopes: [orders:read] }}
"#,
        intro.addr, up.addr
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(call(&c, &gw, "/x", Some("good-1")).await.status, 200);
    }
    assert_eq!(
        intro.calls.load(Ordering::SeqCst),
        1,
        "active answer cached"
    );
    for _ in 0..3 {
        call(&c, &gw, "/x", Some("revoked-1"))
            .await
            .assert_gateway_error(401);
    }
    assert_eq!(
        intro.calls.load(Ordering::SeqCst),
        2,
        "inactive answer cached"
    );
    // Endpoint down: a token it has not answered for is refused with 503, never let through;
    // one it already answered for keeps working from the cache.
    intro.mode.store(1, Ordering::SeqCst);
    let r = call(&c, &gw, "/x", Some("good-2")).await;
    r.assert_gateway_error(503);
    assert_eq!(call(&c, &gw, "/x", Some("good-1")).await.status, 200);
    // Hung endpoint: the answer comes after timeout_ms (400 ms), not after the endpoint's 3 s.
    intro.mode.store(2, Ordering::SeqCst);
    let t = std::time::Instant::now();
    let r = call(&c, &gw, "/x", Some("good-3")).await;
    let took = t.elapsed();
    r.assert_gateway_error(503);
    assert_closed_on_time(took, Duration::from_millis(400));
    intro.mode.store(0, Ordering::SeqCst);
    assert_eq!(call(&c, &gw, "/x", Some("good-2")).await.status, 200);
}

#[tokio::test]
async fn revoked_jtis_are_refused_and_a_redis_outage_denies_or_allows_as_configured() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let mut redis = RedisServer::start().await;
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
redis: {{ url: "{}" }}
auth:
  jwt:
    - name: shared
      secret: "{SECRET}"
      algorithms: [HS256]
      revocation: {{ store: redis, key_prefix: "revoked:", cache_s: 1 }}
    - name: lenient
      secret: "{SECRET}"
      algorithms: [HS256]
      revocation: {{ store: redis, key_prefix: "revoked:", cache_s: 1, on_store_failure: allow }}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
routes:
  - name: lenient
    match: {{ path: {{ prefix: /lenient }} }}
    upstream: up
    auth: {{ jwt: lenient }}
  - name: api
    match: {{ path: {{ prefix: / }} }}
    upstream: up
    auth: {{ jwt: shared }}
"#,
        redis.url(),
        up.addr
    ))
    .await;
    let c = client();
    let mut cl = claims();
    cl["jti"] = json!("token-42");
    let token = hs(Algorithm::HS256, &cl);
    assert_eq!(call(&c, &gw, "/", Some(&token)).await.status, 200);
    assert_eq!(
        redis
            .command(&["SET", "revoked:token-42", "1"])
            .await
            .as_deref(),
        Some("+OK")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the local cache
    let r = call(&c, &gw, "/", Some(&token)).await;
    r.assert_gateway_error(401);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("revoked"));
    // The lenient provider checks the same list while Redis is up.
    call(&c, &gw, "/lenient", Some(&token))
        .await
        .assert_gateway_error(401);
    // Redis gone: on_store_failure defaults to deny (503, never forwarded); `allow` lets a
    // token through unchecked, as documented.
    redis.kill();
    let mut other = claims();
    other["jti"] = json!("token-43");
    let other = hs(Algorithm::HS256, &other);
    let before = up.count();
    call(&c, &gw, "/", Some(&other))
        .await
        .assert_gateway_error(503);
    assert_eq!(
        up.count(),
        before,
        "a denied request never reaches the upstream"
    );
    let r = call(&c, &gw, "/lenient", Some(&other)).await;
    assert_eq!(r.status, 200, "on_store_failure: allow: {}", r.text());
    assert_eq!(up.count(), before + 1);
}

#[tokio::test]
async fn a_gateway_starts_while_the_idp_is_down_and_picks_up_keys_later() {
    let _alone = ALONE.lock().await;
    let up = Upstream::start("up").await;
    let key = ec_key(Algorithm::ES256, "k1");
    let idp = Idp::start(&[&key]).await;
    idp.mode.store(1, Ordering::SeqCst);
    let gw = TestGateway::start(&config(&up, &idp, "ES256")).await;
    let c = client();
    call(&c, &gw, "/jwt", Some(&sign(&key, &claims())))
        .await
        .assert_gateway_error(401);
    idp.mode.store(0, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if call(&c, &gw, "/jwt", Some(&sign(&key, &claims())))
            .await
            .status
            == 200
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "keys never picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the gateway fetch the JWKS again (a token with a kid it has never seen, retried past
/// `jwks_min_refetch_s`) and returns once the IdP has answered that fetch.
async fn force_refetch(c: &HttpClient, gw: &TestGateway, idp: &Idp) {
    let before = idp.fetches.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let probe = raw_token(
            &json!({"alg": "ES256", "kid": format!("probe-{}", rand::random::<u64>())}),
            &claims(),
            &[1u8; 64],
        );
        assert_eq!(call(c, gw, "/jwt", Some(&probe)).await.status, 401);
        if idp.fetches.load(Ordering::SeqCst) > before {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an unknown kid never made the gateway refetch the JWKS"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn jwks_key_rules_x5c_and_the_verified_token_cache() {
    let _alone = ALONE.lock().await;
    const NO_KEY: &str = "unauthorized: no key for this token";
    const BAD_SIG: &str = "unauthorized: the token's signature is not valid";
    let up = Upstream::start("up").await;
    let rsa = rsa_key(Algorithm::RS256, "a");
    let ec = ec_key(Algorithm::ES256, "b");
    // An RSA key published for encryption, and a symmetric key: both must be ignored.
    let mut enc = rsa_key(Algorithm::RS256, "enc");
    enc.jwk["use"] = json!("enc");
    let sym = SigningKey {
        alg: Algorithm::HS256,
        kid: "sym".into(),
        encoding: EncodingKey::from_secret(SECRET.as_bytes()),
        jwk: json!({ "kty": "oct", "kid": "sym", "alg": "HS256", "k": b64(SECRET.as_bytes()) }),
    };
    let idp = Idp::start(&[&rsa, &enc, &ec, &sym]).await;
    let gw = TestGateway::start(&config(&up, &idp, "RS256, ES256")).await;
    let c = client();
    let refused = |r: Reply, why: &str, name: &str| {
        r.assert_gateway_error(401);
        assert_eq!(r.json()["error"], why, "{name}");
    };
    let unkeyed = |key: &SigningKey| {
        jsonwebtoken::encode(&Header::new(key.alg), &claims(), &key.encoding).unwrap()
    };
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&rsa, &claims())))
            .await
            .status,
        200
    );
    let before = up.count();

    // `use: enc` and symmetric keys are not keys for verifying tokens.
    refused(
        call(&c, &gw, "/jwt", Some(&sign(&enc, &claims()))).await,
        NO_KEY,
        "use: enc key",
    );
    let rsa_under_sym = SigningKey {
        kid: "sym".into(),
        ..rsa_key(Algorithm::RS256, "x")
    };
    refused(
        call(&c, &gw, "/jwt", Some(&sign(&rsa_under_sym, &claims()))).await,
        NO_KEY,
        "symmetric key's kid",
    );
    assert_eq!(
        up.count(),
        before,
        "a token on an ignored key reached the upstream"
    );

    // No kid: exactly one RSA key fits (the `use: enc` one does not count), and one EC key.
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&unkeyed(&rsa))).await.status,
        200,
        "RS256 without kid"
    );
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&unkeyed(&ec))).await.status,
        200,
        "ES256 without kid"
    );

    // `x5c` carries the attacker's own certificate; the gateway must verify against the JWKS
    // only, so the attacker's signature is a bad signature, with a kid or without one.
    let attacker = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker.test".into()])
        .unwrap()
        .self_signed(&attacker)
        .unwrap();
    let attacker_key = EncodingKey::from_ec_der(&attacker.serialize_der());
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let before = up.count();
    for (name, kid) in [
        ("x5c without kid", None),
        ("x5c with the EC kid", Some("b")),
    ] {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        h.x5c = Some(vec![x5c.clone()]);
        let token = jsonwebtoken::encode(&h, &claims(), &attacker_key).unwrap();
        refused(call(&c, &gw, "/jwt", Some(&token)).await, BAD_SIG, name);
    }
    assert_eq!(
        up.count(),
        before,
        "an x5c-signed token reached the upstream"
    );

    // A second signing RSA key: a token without kid is now ambiguous for RS256 (refused,
    // never tried against both), still unambiguous for ES256.
    let rsa2 = rsa_key(Algorithm::RS256, "c");
    idp.publish(&[&rsa, &enc, &ec, &sym, &rsa2]);
    force_refetch(&c, &gw, &idp).await;
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&sign(&rsa2, &claims())))
            .await
            .status,
        200
    );
    refused(
        call(&c, &gw, "/jwt", Some(&unkeyed(&rsa))).await,
        NO_KEY,
        "RS256 without kid, two RSA keys",
    );
    assert_eq!(call(&c, &gw, "/jwt", Some(&unkeyed(&ec))).await.status, 200);

    // The verified-token cache: a token verified once is answered from the cache (it still
    // passes after its key left the JWKS, where a fresh token with that key fails), and never
    // past its `exp`.
    let exp = now() + 8;
    let mut cl = claims();
    cl["exp"] = json!(exp);
    let cached = sign(&rsa, &cl);
    assert_eq!(call(&c, &gw, "/jwt", Some(&cached)).await.status, 200);
    idp.publish(&[&ec, &rsa2]);
    force_refetch(&c, &gw, &idp).await;
    refused(
        call(&c, &gw, "/jwt", Some(&sign(&rsa, &claims()))).await,
        NO_KEY,
        "removed key",
    );
    assert_eq!(
        call(&c, &gw, "/jwt", Some(&cached)).await.status,
        200,
        "the cache answers"
    );
    assert!(
        now() < exp,
        "the machine was too slow to see the cache before exp"
    );
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(
        call(&c, &gw, "/jwt", Some(&cached)).await,
        NO_KEY,
        "a cached token past its exp",
    );
}
