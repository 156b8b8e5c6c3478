//! RFC 9421 appendix B vectors, and the application requirements on top of them.

use super::base::{signature_base, SignedRequest};
use super::keys::{Alg, KeyMaterial, Verifier};
use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;

const RSA_PSS_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----";
const ECC_P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----";
const ED25519_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----";
const RSA_PKCS1_PUB: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsPBRrw
WEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsdJKFq
MGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75jfZg
kne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKIlE0P
uKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZSFlQ
PSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQAB
-----END RSA PUBLIC KEY-----";
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
const CREATED: u64 = 1618884473;
const DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
const CLIENT_CERT: &str = ":MIIBqDCCAU6gAwIBAgIBBzAKBggqhkjOPQQDAjA6MRswGQYDVQQKDBJMZXQncyBBdXRoZW50aWNhdGUxGzAZBgNVBAMMEkxBIEludGVybWVkaWF0ZSBDQTAeFw0yMDAxMTQyMjU1MzNaFw0yMTAxMjMyMjU1MzNaMA0xCzAJBgNVBAMMAkJDMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8YnXXfaUgmnMtOXU/IncWalRhebrXmckC8vdgJ1p5Be5F/3YC8OthxM4+k1M6aEAEFcGzkJiNy6J84y7uzo9M6NyMHAwCQYDVR0TBAIwADAfBgNVHSMEGDAWgBRm3WjLa38lbEYCuiCPct0ZaSED2DAOBgNVHQ8BAf8EBAMCBsAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0RAQH/BBMwEYEPYmRjQGV4YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIBHda/r1vaL6G3VliL4/Di6YK0Q6bMjeSkC3dFCOOB8TAiEAx/kHSB4urmiZ0NX5r5XarmPk0wmuydBVoU4hBVZ1yhk=:";

/// The RFC's test-request (or, with `proxy`, the B.3 internal request).
struct Msg {
    method: &'static str,
    authority: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
}

fn test_request() -> Msg {
    let mut h = HeaderMap::new();
    h.insert("host", "example.com".parse().unwrap());
    h.insert("date", "Tue, 20 Apr 2021 02:07:55 GMT".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("content-digest", DIGEST.parse().unwrap());
    h.insert("content-length", "18".parse().unwrap());
    Msg {
        method: "POST",
        authority: "example.com",
        path: "/foo",
        query: Some("param=Value&Pet=dog"),
        headers: h,
    }
}

fn proxy_request() -> Msg {
    let mut m = test_request();
    m.authority = "service.internal.example";
    m.headers.remove("content-digest");
    m.headers
        .insert("client-cert", CLIENT_CERT.parse().unwrap());
    m
}

impl Msg {
    fn view(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: self.method,
            scheme: "https",
            authority: self.authority,
            path: self.path,
            query: self.query,
            headers: &self.headers,
        }
    }
}

fn inner(sig_input: &str) -> InnerList {
    let d: sfv::Dictionary = Parser::new(sig_input).parse().unwrap();
    match d.into_iter().next().unwrap().1 {
        ListEntry::InnerList(l) => l,
        _ => panic!("not an inner list"),
    }
}

struct Vector {
    name: &'static str,
    key: fn() -> KeyMaterial,
    msg: fn() -> Msg,
    input: &'static str,
    base: &'static str,
    signature: &'static str,
}

fn pss() -> KeyMaterial {
    KeyMaterial::public_pem(Alg::RsaPssSha512, RSA_PSS_PUB).unwrap()
}

const VECTORS: [Vector; 6] = [
    Vector {
        name: "B.2.1",
        key: pss,
        msg: test_request,
        input: r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#,
        base: r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#,
        signature: "d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==",
    },
    Vector {
        name: "B.2.2",
        key: pss,
        msg: test_request,
        input: r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
        base: "\"@authority\": example.com\n\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n\"@query-param\";name=\"Pet\": dog\n\"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\"",
        signature: "LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==",
    },
    Vector {
        name: "B.2.3",
        key: pss,
        msg: test_request,
        input: r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
        base: "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\"",
        signature: "bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==",
    },
    Vector {
        name: "B.2.5",
        key: || KeyMaterial::secret(STANDARD.decode(SHARED_SECRET).unwrap()).unwrap(),
        msg: test_request,
        input: r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        base: "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"",
        signature: "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=",
    },
    Vector {
        name: "B.2.6",
        key: || KeyMaterial::public_pem(Alg::Ed25519, ED25519_PUB).unwrap(),
        msg: test_request,
        input: r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        base: "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        signature: "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
    },
    Vector {
        name: "B.3",
        key: || KeyMaterial::public_pem(Alg::EcdsaP256Sha256, ECC_P256_PUB).unwrap(),
        msg: proxy_request,
        input: r#"ttrp=("@path" "@query" "@method" "@authority" "client-cert");created=1618884473;keyid="test-key-ecc-p256""#,
        base: "\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n\"@method\": POST\n\"@authority\": service.internal.example\n\"client-cert\": :MIIBqDCCAU6gAwIBAgIBBzAKBggqhkjOPQQDAjA6MRswGQYDVQQKDBJMZXQncyBBdXRoZW50aWNhdGUxGzAZBgNVBAMMEkxBIEludGVybWVkaWF0ZSBDQTAeFw0yMDAxMTQyMjU1MzNaFw0yMTAxMjMyMjU1MzNaMA0xCzAJBgNVBAMMAkJDMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8YnXXfaUgmnMtOXU/IncWalRhebrXmckC8vdgJ1p5Be5F/3YC8OthxM4+k1M6aEAEFcGzkJiNy6J84y7uzo9M6NyMHAwCQYDVR0TBAIwADAfBgNVHSMEGDAWgBRm3WjLa38lbEYCuiCPct0ZaSED2DAOBgNVHQ8BAf8EBAMCBsAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0RAQH/BBMwEYEPYmRjQGV4YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIBHda/r1vaL6G3VliL4/Di6YK0Q6bMjeSkC3dFCOOB8TAiEAx/kHSB4urmiZ0NX5r5XarmPk0wmuydBVoU4hBVZ1yhk=:\n\"@signature-params\": (\"@path\" \"@query\" \"@method\" \"@authority\" \"client-cert\");created=1618884473;keyid=\"test-key-ecc-p256\"",
        signature: "xVMHVpawaAC/0SbHrKRs9i8I3eOs5RtTMGCWXm/9nvZzoHsIg6Mce9315T6xoklyy0yzhD9ah4JHRwMLOgmizw==",
    },
];

/// Whether the vector's signature verifies over the base rebuilt from `msg` and `input`.
fn verifies(v: &Vector, msg: &Msg, input: &InnerList) -> bool {
    let key = Verifier::new(&(v.key)());
    let sig = STANDARD.decode(v.signature).unwrap();
    match signature_base(input, &msg.view()) {
        Ok(base) => key.verify(base.as_bytes(), &sig),
        Err(_) => false,
    }
}

#[test]
fn rfc_9421_vectors_rebuild_the_base_and_verify() {
    for v in &VECTORS {
        let msg = (v.msg)();
        let list = inner(v.input);
        assert_eq!(
            signature_base(&list, &msg.view()).unwrap(),
            v.base,
            "{}",
            v.name
        );
        assert!(verifies(v, &msg, &list), "{} verifies", v.name);
    }
}

#[test]
fn every_mutation_of_a_vector_fails() {
    for v in &VECTORS {
        let list = inner(v.input);
        let covers = |c: &str| {
            list.items
                .iter()
                .any(|i| i.bare_item.as_string().is_some_and(|s| s.as_str() == c))
        };
        let mut mutations: Vec<(String, Msg)> = Vec::new();
        for field in [
            "date",
            "content-type",
            "content-digest",
            "content-length",
            "client-cert",
        ] {
            if covers(field) {
                let mut m = (v.msg)();
                let old = m.headers.get(field).unwrap().to_str().unwrap().to_string();
                m.headers.insert(field, format!("{old}x").parse().unwrap());
                mutations.push((format!("changed {field}"), m));
            }
        }
        if covers("@path") {
            let mut m = (v.msg)();
            m.path = "/bar";
            mutations.push(("changed path".into(), m));
        }
        if covers("@method") {
            let mut m = (v.msg)();
            m.method = "PUT";
            mutations.push(("changed method".into(), m));
        }
        if covers("@query") || covers("@query-param") {
            let mut m = (v.msg)();
            m.query = Some("param=Value&Pet=cat");
            mutations.push(("changed query".into(), m));
        }
        if covers("@authority") {
            let mut m = (v.msg)();
            m.authority = "example.org";
            mutations.push(("changed authority".into(), m));
        }
        for (what, m) in &mutations {
            assert!(!verifies(v, m, &list), "{} with {what} must fail", v.name);
        }
        // Each component dropped from the covered list (the signature then covers less).
        for i in 0..list.items.len() {
            let mut fewer = list.clone();
            fewer.items.remove(i);
            assert!(
                !verifies(v, &(v.msg)(), &fewer),
                "{} without component {i} must fail",
                v.name
            );
        }
        // A changed signature parameter.
        let mut other = list.clone();
        other.params.insert(
            sfv::Key::from_string("created".into()).unwrap(),
            BareItem::Integer(sfv::integer(CREATED as i64 + 1)),
        );
        assert!(
            !verifies(v, &(v.msg)(), &other),
            "{} with another created must fail",
            v.name
        );
        assert!(v.name == "B.2.1" || !mutations.is_empty());
    }
}

#[test]
fn keys_are_bound_to_their_algorithm() {
    assert!(KeyMaterial::public_pem(Alg::RsaV15Sha256, RSA_PKCS1_PUB).is_ok());
    assert!(KeyMaterial::public_pem(Alg::Ed25519, RSA_PKCS1_PUB).is_err());
    assert!(
        KeyMaterial::public_pem(Alg::EcdsaP384Sha384, ECC_P256_PUB).is_err(),
        "wrong curve"
    );
    assert!(KeyMaterial::public_pem(Alg::Ed25519, ECC_P256_PUB).is_err());
    assert!(KeyMaterial::public_pem(Alg::HmacSha256, ED25519_PUB).is_err());
    assert!(KeyMaterial::secret(b"short".to_vec()).is_err());
}

fn spec(keys: Vec<KeySpec>) -> SignatureSpec {
    SignatureSpec {
        name: "partners".into(),
        keys,
        required: DEFAULT_REQUIRED.iter().map(|s| s.to_string()).collect(),
        label: None,
        max_age_s: 300,
        clock_skew_s: 30,
        require_nonce: false,
        replay: ReplaySpec {
            redis: false,
            allow_on_failure: false,
            max_entries: 100,
        },
    }
}

fn ed_key() -> KeySpec {
    KeySpec {
        id: "test-key-ed25519".into(),
        material: KeyMaterial::public_pem(Alg::Ed25519, ED25519_PUB).unwrap(),
        tenant: Some("acme".into()),
        scopes: vec!["orders:write".into()],
        consumer: None,
    }
}

fn with_signature(input: &str, sig: &str) -> Msg {
    let mut m = test_request();
    m.headers.insert("signature-input", input.parse().unwrap());
    m.headers.insert("signature", sig.parse().unwrap());
    m
}

fn check(
    v: &SignatureVerifier,
    m: &Msg,
    has_body: bool,
    now: u64,
) -> Result<(Principal, Option<String>), Reason> {
    v.verify(&SignatureInput {
        request: m.view(),
        has_body,
        now,
    })
    .map_err(|f| f.reason)
}

#[test]
fn the_application_requirements_are_enforced() {
    let v = SignatureVerifier::new(&spec(vec![ed_key()]), None, Arc::new(LocalNonces::new(10)));
    let b26 = &VECTORS[4];
    let sig = format!("sig-b26=:{}:", b26.signature);
    let m = with_signature(b26.input, &sig);
    let (p, nonce) = check(&v, &m, false, CREATED + 10).unwrap();
    assert_eq!(p.subject.as_deref(), Some("test-key-ed25519"));
    assert_eq!(p.tenant.as_deref(), Some("acme"));
    assert!(nonce.is_none());
    // The body is not bound by B.2.6 (no content-digest covered).
    assert_eq!(
        check(&v, &m, true, CREATED + 10).unwrap_err(),
        Reason::ComponentNotCovered
    );
    assert_eq!(
        check(&v, &m, false, CREATED + 600).unwrap_err(),
        Reason::Expired
    );
    assert_eq!(
        check(&v, &m, false, CREATED - 600).unwrap_err(),
        Reason::IssuedInFuture
    );
    // Within the skew either way.
    assert!(check(&v, &m, false, CREATED - 20).is_ok());
    assert!(check(&v, &m, false, CREATED + 320).is_ok());
    // Nothing signed at all.
    assert_eq!(
        check(&v, &test_request(), false, CREATED).unwrap_err(),
        Reason::MissingCredentials
    );
    // Unknown key, a differing alg, a duplicated label, malformed fields.
    let unknown = with_signature(&b26.input.replace("test-key-ed25519", "someone-else"), &sig);
    assert_eq!(
        check(&v, &unknown, false, CREATED).unwrap_err(),
        Reason::UnknownKey
    );
    let alg = with_signature(&format!("{};alg=\"hmac-sha256\"", b26.input), &sig);
    assert_eq!(
        check(&v, &alg, false, CREATED).unwrap_err(),
        Reason::AlgorithmNotAllowed
    );
    let with_own_alg = with_signature(&format!("{};alg=\"ed25519\"", b26.input), &sig);
    assert_eq!(
        check(&v, &with_own_alg, false, CREATED).unwrap_err(),
        Reason::BadSignature,
        "alg is covered by the signature"
    );
    let mut dup = with_signature(b26.input, &sig);
    dup.headers.append(
        "signature-input",
        b26.input.replace("\"date\" ", "").parse().unwrap(),
    );
    assert_eq!(
        check(&v, &dup, false, CREATED).unwrap_err(),
        Reason::Malformed
    );
    let dup_one_line = with_signature(&format!("{}, {}", b26.input, b26.input), &sig);
    assert_eq!(
        check(&v, &dup_one_line, false, CREATED).unwrap_err(),
        Reason::Malformed
    );
    for (input, s) in [
        ("sig-b26=(\"date\"", sig.as_str()),
        (b26.input, "sig-b26=notbytes"),
        ("sig-b26=\"a string\"", sig.as_str()),
        (
            &*format!(
                "{};created=\"x\";keyid=\"test-key-ed25519\"",
                b26.input.split(";created").next().unwrap()
            ),
            sig.as_str(),
        ),
    ] {
        let m = with_signature(input, s);
        assert_eq!(
            check(&v, &m, false, CREATED).unwrap_err(),
            Reason::Malformed,
            "{input} / {s}"
        );
    }
    // Fewer components than required (no @path).
    let fewer = with_signature(&b26.input.replace("\"@path\" ", ""), &sig);
    assert_eq!(
        check(&v, &fewer, false, CREATED).unwrap_err(),
        Reason::ComponentNotCovered
    );
    // A nonce required.
    let mut s = spec(vec![ed_key()]);
    s.require_nonce = true;
    let strict = SignatureVerifier::new(&s, None, Arc::new(LocalNonces::new(10)));
    assert_eq!(
        check(&strict, &m, false, CREATED).unwrap_err(),
        Reason::MissingNonce
    );
}

#[test]
fn an_hmac_signature_over_a_public_key_is_refused() {
    // The classic confusion: sign with HMAC, using the public key's bytes as the secret.
    let v = SignatureVerifier::new(&spec(vec![ed_key()]), None, Arc::new(LocalNonces::new(10)));
    let input =
        r#"sig1=("@method" "@authority" "@path");created=1618884473;keyid="test-key-ed25519""#;
    let list = inner(input);
    let base = signature_base(&list, &test_request().view()).unwrap();
    for secret in [ED25519_PUB.as_bytes().to_vec(), ed_key().material.bytes] {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&k, base.as_bytes());
        let sig = format!("sig1=:{}:", STANDARD.encode(tag.as_ref()));
        let m = with_signature(input, &sig);
        assert_eq!(
            check(&v, &m, false, CREATED).unwrap_err(),
            Reason::BadSignature
        );
        let m = with_signature(&format!("{input};alg=\"hmac-sha256\""), &sig);
        assert_eq!(
            check(&v, &m, false, CREATED).unwrap_err(),
            Reason::AlgorithmNotAllowed
        );
    }
}
