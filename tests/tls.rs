//! TLS termination with real handshakes: SNI certificate choice (two names and a wildcard),
//! TLS 1.1 refused, ALPN h2 negotiated and used, HSTS only on TLS, mTLS (required and optional,
//! subject passed upstream, spoofed copies removed, `auth: { mtls: {} }`), and certificate
//! rotation on reload while an old connection keeps working. Certificates are made by rcgen.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.display().to_string()
}

fn client_config(
    ca: &Ca,
    alpn: &[&[u8]],
    client: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    portcullis::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            use rustls::pki_types::pem::PemObject;
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

fn served_cert(s: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(stream: TlsStream<tokio::net::TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(sender: &mut H1, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

struct Setup {
    ca: Ca,
    dir: tempfile::TempDir,
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
    wild: CertificateDer<'static>,
    client: (String, String),
}

fn setup() -> Setup {
    let ca = ca("Portcullis Test CA");
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.1 too, so a client that sends no SNI (connecting by IP) can check it got the
    // first certificate.
    let (a_pem, a_key, a) = leaf(&ca, "a", &["a.example.com", "127.0.0.1"]);
    let (b_pem, b_key, b) = leaf(&ca, "b", &["b.example.com"]);
    let (w_pem, w_key, wild) = leaf(&ca, "wild", &["*.wild.example.com"]);
    write(dir.path(), "a.pem", &a_pem);
    write(dir.path(), "a.key", &a_key);
    write(dir.path(), "b.pem", &b_pem);
    write(dir.path(), "b.key", &b_key);
    write(dir.path(), "w.pem", &w_pem);
    write(dir.path(), "w.key", &w_key);
    write(dir.path(), "ca.pem", &ca.pem);
    let (c_pem, c_key, _) = leaf(&ca, "client-1", &["client-1.example.com"]);
    Setup {
        ca,
        dir,
        a,
        b,
        wild,
        client: (c_pem, c_key),
    }
}

fn config(s: &Setup, up: &Upstream, client_auth: &str) -> String {
    let d = s.dir.path().display();
    format!(
        r#"listeners:
  - name: secure
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{ cert_file: "{d}/a.pem", key_file: "{d}/a.key" }}
        - {{ cert_file: "{d}/b.pem", key_file: "{d}/b.key" }}
        - {{ cert_file: "{d}/w.pem", key_file: "{d}/w.key" }}
      hsts: {{ max_age_s: 63072000, include_subdomains: true, preload: true }}
      {client_auth}
  - name: plain
    address: "127.0.0.1:0"
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
upstreams:
  - {{ name: up, targets: [{{ address: "{}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: / }} }}
    upstream: up
"#,
        up.addr
    )
}

fn plain_addr(gw: &TestGateway) -> SocketAddr {
    gw.running.as_ref().unwrap().listener("plain").unwrap()
}

#[tokio::test]
async fn sni_alpn_hsts_and_old_versions() {
    let s = setup();
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&s, &up, "")).await;
    let cfg = client_config(&s.ca, &[b"http/1.1"], None);
    for (sni, want) in [
        ("a.example.com", &s.a),
        ("b.example.com", &s.b),
        ("x.wild.example.com", &s.wild),
        ("127.0.0.1", &s.a), // no SNI: the first certificate
    ] {
        let conn = connect(gw.addr, sni, Arc::clone(&cfg)).await.unwrap();
        assert_eq!(&served_cert(&conn), want, "{sni}");
    }
    // An SNI no certificate names also gets the first (which this client then refuses, for
    // the name: the handshake itself worked).
    let Err(err) = connect(gw.addr, "unknown.example.com", Arc::clone(&cfg)).await else {
        panic!("a certificate for other names was accepted");
    };
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {err:?}"));
    assert!(
        matches!(
            tls,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                )
        ),
        "{tls:?}"
    );

    // ALPN h2 negotiated and used, over TLS; HSTS on the response.
    let h2cfg = client_config(&s.ca, &[b"h2", b"http/1.1"], None);
    let stream = connect(gw.addr, "a.example.com", h2cfg).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("https://a.example.com/h2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains; preload"
    );
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");

    // Plaintext: no HSTS.
    let r = get(&client(), &format!("http://{}/p", plain_addr(&gw)), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("strict-transport-security").is_none());

    // A TLS 1.1 ClientHello is refused: the answer is an alert (or nothing), never a
    // ServerHello.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut hello = vec![0x01, 0x00, 0x00, 0x00, 0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f, 0x01, 0x00]);
    let len = hello.len() - 4;
    hello[1..4].copy_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    let mut record = vec![
        0x16,
        0x03,
        0x02,
        (hello.len() >> 8) as u8,
        hello.len() as u8,
    ];
    record.extend_from_slice(&hello);
    raw.write_all(&record).await.unwrap();
    let mut answer = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || answer[0] == 0x15,
        "not refused: {:?}",
        &answer[..n]
    );
}

#[tokio::test]
async fn mtls_required_passes_the_subject_and_strips_spoofed_headers() {
    let s = setup();
    let up = Upstream::start("up").await;
    let d = s.dir.path().display().to_string();
    let gw = TestGateway::start(&config(
        &s,
        &up,
        &format!("client_auth: {{ ca_file: \"{d}/ca.pem\", required: true }}"),
    ))
    .await;
    // Without a client certificate: the handshake (or, in TLS 1.3, the first exchange) fails.
    let no_cert = client_config(&s.ca, &[b"http/1.1"], None);
    let failed = match connect(gw.addr, "a.example.com", no_cert).await {
        Err(_) => true,
        Ok(stream) => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender
                .send_request(
                    http::Request::get("/")
                        .header("host", "a.example.com")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .is_err()
        }
    };
    assert!(failed, "a client without a certificate got through");
    let before = up.count();
    assert_eq!(before, 0);

    let with_cert = client_config(&s.ca, &[b"http/1.1"], Some((&s.client.0, &s.client.1)));
    let stream = connect(gw.addr, "a.example.com", with_cert).await.unwrap();
    let mut sender = h1(stream).await;
    let r = request(
        &mut sender,
        "a.example.com",
        "/m",
        &[("x-client-cert-subject", "CN=admin")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-client-cert-subject"], "CN=client-1");
    assert_eq!(
        seen.headers["x-client-cert-san"],
        "DNS:client-1.example.com"
    );

    // A spoofed copy on a plaintext connection never reaches the upstream.
    get(
        &client(),
        &format!("http://{}/p", plain_addr(&gw)),
        &[
            ("x-client-cert-subject", "CN=admin"),
            ("x-client-cert-san", "DNS:admin"),
        ],
    )
    .await;
    let seen = up.last();
    assert!(seen.headers.get("x-client-cert-subject").is_none());
    assert!(seen.headers.get("x-client-cert-san").is_none());
}

#[tokio::test]
async fn mtls_optional_with_route_auth() {
    let s = setup();
    let up = Upstream::start("up").await;
    let d = s.dir.path().display().to_string();
    let yaml = config(
        &s,
        &up,
        &format!("client_auth: {{ ca_file: \"{d}/ca.pem\", required: false }}"),
    )
    .replace(
        "    upstream: up\n",
        "    upstream: up\n    auth: { mtls: {} }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let no_cert = client_config(&s.ca, &[b"http/1.1"], None);
    let mut sender = h1(connect(gw.addr, "a.example.com", no_cert).await.unwrap()).await;
    let r = request(&mut sender, "a.example.com", "/", &[]).await;
    assert_eq!(r.status, 401, "no certificate: refused by the route's auth");
    let with_cert = client_config(&s.ca, &[b"http/1.1"], Some((&s.client.0, &s.client.1)));
    let mut sender = h1(connect(gw.addr, "a.example.com", with_cert).await.unwrap()).await;
    assert_eq!(
        request(&mut sender, "a.example.com", "/", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn certificates_rotate_on_reload_and_old_connections_keep_working() {
    let s = setup();
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&s, &up, "")).await;
    let cfg = client_config(&s.ca, &[b"http/1.1"], None);
    let old = connect(gw.addr, "a.example.com", Arc::clone(&cfg))
        .await
        .unwrap();
    assert_eq!(served_cert(&old), s.a);
    let mut old_sender = h1(old).await;
    assert_eq!(
        request(&mut old_sender, "a.example.com", "/1", &[])
            .await
            .status,
        200
    );

    // New files under the same names, same config text: the reload still swaps them in.
    let (a2_pem, a2_key, a2) = leaf(&s.ca, "a-rotated", &["a.example.com"]);
    write(s.dir.path(), "a.pem", &a2_pem);
    write(s.dir.path(), "a.key", &a2_key);
    let applied = gw.gateway.reload().await.unwrap();
    assert!(applied.changed);
    let new = connect(gw.addr, "a.example.com", Arc::clone(&cfg))
        .await
        .unwrap();
    assert_eq!(
        served_cert(&new),
        a2,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        request(&mut old_sender, "a.example.com", "/2", &[])
            .await
            .status,
        200,
        "the old connection keeps working"
    );

    // A broken file: the reload is refused with the file named; the current certificate stays.
    write(s.dir.path(), "a.pem", "not a certificate");
    let err = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(err.contains("a.pem"), "{err}");
    let again = connect(gw.addr, "a.example.com", cfg).await.unwrap();
    assert_eq!(served_cert(&again), a2);
}

/// A TLS server config for `cert_pem` / `key_pem`, offering h2 and HTTP/1.1.
fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    portcullis::tls::install_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test]
async fn tls_client_to_an_https_upstream_with_bodies_and_trailers() {
    let s = setup();
    // The upstream's certificate comes from a CA of its own and names only upstream.internal.
    let internal = ca("Internal CA");
    let (up_pem, up_key, _) = leaf(&internal, "upstream", &["upstream.internal"]);
    let up = Upstream::start_tls("secure-up", server_config(&up_pem, &up_key)).await;
    let internal_ca = write(s.dir.path(), "internal-ca.pem", &internal.pem);
    let upstream = |name: &str, tls: &str| {
        format!(
            "  - {{ name: {name}, protocol: https, {tls}targets: [{{ address: \"{}\" }}] }}\n",
            up.addr
        )
    };
    let yaml = config(&s, &up, "")
        .replace(
            "upstreams:\n",
            &format!(
                "upstreams:\n{}{}{}",
                upstream(
                    "verified",
                    &format!("tls: {{ server_name: upstream.internal, ca_file: \"{internal_ca}\" }}, ")
                ),
                upstream(
                    "wrong-name",
                    &format!("tls: {{ server_name: other.internal, ca_file: \"{internal_ca}\" }}, ")
                ),
                // Default trust: the Mozilla roots, which never signed the internal CA.
                upstream("public-roots", "tls: { server_name: upstream.internal }, "),
            ),
        )
        .replace(
            "routes:\n",
            "routes:\n  - { name: v, match: { path: { prefix: /v/ } }, upstream: verified, rewrite: { strip_prefix: /v } }\n  - { name: w, match: { path: { prefix: /w/ } }, upstream: wrong-name }\n  - { name: p, match: { path: { prefix: /p/ } }, upstream: public-roots }\n",
        );
    let gw = TestGateway::start(&yaml).await;

    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let stream = connect(
            gw.addr,
            "a.example.com",
            client_config(&s.ca, &[alpn], None),
        )
        .await
        .unwrap();
        let req = http::Request::post("https://a.example.com/v/trailers")
            .header("host", "a.example.com")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"request body")))
            .unwrap();
        let resp = if alpn == b"h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let mut sender = h1(stream).await;
            let (mut parts, body) = req.into_parts();
            parts.uri = "/v/trailers".parse().unwrap();
            sender
                .send_request(http::Request::from_parts(parts, body))
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), 200, "{alpn:?}");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes(), "payload");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
        let seen = up.last();
        assert_eq!(seen.uri, "/trailers");
        assert_eq!(seen.body_len, 12, "request body arrived whole");
        assert_eq!(seen.version, http::Version::HTTP_11);
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }
    let served = up.count();

    // A certificate that does not name the expected server, or that no trusted CA signed:
    // 502, and nothing reaches the upstream's HTTP layer.
    let plain = format!("http://{}", plain_addr(&gw));
    for path in ["/w/x", "/p/x"] {
        let r = get(&client(), &format!("{plain}{path}"), &[]).await;
        r.assert_gateway_error(502);
    }
    assert_eq!(up.count(), served);
}

/// PROXY protocol v2 comes before the TLS handshake; its source is the client the upstream is
/// told about.
#[tokio::test]
async fn tls_after_a_proxy_v2_header() {
    let s = setup();
    let up = Upstream::start("up").await;
    let yaml = config(&s, &up, "").replacen(
        "    address: \"127.0.0.1:0\"\n    tls:",
        "    address: \"127.0.0.1:0\"\n    proxy_protocol: v2\n    tls:",
        1,
    );
    let gw = TestGateway::start(&yaml).await;
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[203, 0, 113, 77, 127, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb]);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &header)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&s.ca, &[b"http/1.1"], None))
        .connect(ServerName::try_from("a.example.com").unwrap(), tcp)
        .await
        .expect("TLS after the PROXY header");
    let mut sender = h1(tls).await;
    let r = request(
        &mut sender,
        "a.example.com",
        "/who",
        &[("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "203.0.113.77");
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");

    // Without the header, the TLS handshake never starts: the connection is closed.
    let before = up.count();
    let refused = connect(
        gw.addr,
        "a.example.com",
        client_config(&s.ca, &[b"http/1.1"], None),
    )
    .await;
    assert!(
        refused.is_err(),
        "a TLS client without a PROXY header was served"
    );
    assert_eq!(up.count(), before);
}

/// A TLS server config that requires a client certificate signed by `client_ca`, offering `alpn`.
fn mtls_server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: &Ca,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    portcullis::tls::install_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// mTLS to upstreams (the gateway presents `client_cert_file`; without it, or with a
/// certificate the upstream does not trust, the upstream refuses the handshake: 502), and
/// `protocol: h2` — HTTP/2 over TLS, ALPN `h2` required (a server that only offers HTTP/1.1
/// is refused rather than spoken to in the wrong protocol). A reload with a rotated client
/// certificate presents the new one.
#[tokio::test]
async fn mtls_and_http2_over_tls_to_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let internal = ca("Internal CA");
    let clients = ca("Gateway client CA");
    let stranger = ca("Some other CA");
    let (up_pem, up_key, _) = leaf(&internal, "upstream", &["upstream.internal"]);
    let (gw_pem, gw_key, _) = leaf(&clients, "gateway", &["gateway.internal"]);
    let (bad_pem, bad_key_pem, _) = leaf(&stranger, "gateway", &["gateway.internal"]);
    let both = Upstream::start_tls(
        "both",
        mtls_server_config(&up_pem, &up_key, &clients, &[b"h2", b"http/1.1"]),
    )
    .await;
    let h1_only = Upstream::start_tls(
        "h1-only",
        mtls_server_config(&up_pem, &up_key, &clients, &[b"http/1.1"]),
    )
    .await;
    let ca_file = write(d, "internal-ca.pem", &internal.pem);
    let cert = write(d, "gw.pem", &gw_pem);
    let key = write(d, "gw.key", &gw_key);
    let bad_cert = write(d, "bad.pem", &bad_pem);
    let bad_key = write(d, "bad.key", &bad_key_pem);
    let tls = |client: Option<(&str, &str)>| {
        let c = client.map_or(String::new(), |(c, k)| {
            format!(", client_cert_file: \"{c}\", client_key_file: \"{k}\"")
        });
        format!("{{ server_name: upstream.internal, ca_file: \"{ca_file}\"{c} }}")
    };
    let upstream = |name: &str, protocol: &str, addr: SocketAddr, tls: String| {
        format!("  - {{ name: {name}, protocol: {protocol}, tls: {tls}, targets: [{{ address: \"{addr}\" }}] }}\n")
    };
    let mut ups = String::new();
    ups += &upstream("mtls", "https", both.addr, tls(Some((&cert, &key))));
    ups += &upstream("no-cert", "https", both.addr, tls(None));
    ups += &upstream(
        "wrong-cert",
        "https",
        both.addr,
        tls(Some((&bad_cert, &bad_key))),
    );
    ups += &upstream("h2", "h2", both.addr, tls(Some((&cert, &key))));
    ups += &upstream("h2-to-h1", "h2", h1_only.addr, tls(Some((&cert, &key))));
    let routes: String = ["mtls", "no-cert", "wrong-cert", "h2", "h2-to-h1"]
        .iter()
        .map(|n| {
            format!("  - {{ name: {n}, match: {{ path: {{ prefix: /{n}/ }} }}, upstream: {n}, rewrite: {{ strip_prefix: /{n} }} }}\n")
        })
        .collect();
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nupstreams:\n{ups}routes:\n{routes}"
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();

    let r = get(&c, &gw.url("/mtls/echo"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(both.last().version, http::Version::HTTP_11);
    let before = both.count();
    for refused in ["/no-cert/echo", "/wrong-cert/echo"] {
        get(&c, &gw.url(refused), &[])
            .await
            .assert_gateway_error(502);
    }
    assert_eq!(
        both.count(),
        before,
        "a request without a trusted certificate got through"
    );

    // HTTP/2 over TLS, several requests on the one shared connection.
    let connections = both.connections.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        let r = get(&c, &gw.url("/h2/echo"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(both.last().version, http::Version::HTTP_2);
    }
    assert_eq!(
        both.connections.load(std::sync::atomic::Ordering::Relaxed),
        connections + 1,
        "h2 requests share one connection"
    );
    let before = h1_only.count();
    get(&c, &gw.url("/h2-to-h1/echo"), &[])
        .await
        .assert_gateway_error(502);
    assert_eq!(h1_only.count(), before);

    // Rotation: the client certificate is re-read on reload; a certificate the upstream does
    // not trust, written over the old files, is what new connections then present.
    std::fs::write(&cert, &bad_pem).unwrap();
    std::fs::write(&key, &bad_key_pem).unwrap();
    gw.gateway.reload().await.unwrap();
    get(&c, &gw.url("/mtls/echo"), &[])
        .await
        .assert_gateway_error(502);
    std::fs::write(&cert, &gw_pem).unwrap();
    std::fs::write(&key, &gw_key).unwrap();
    gw.gateway.reload().await.unwrap();
    assert_eq!(get(&c, &gw.url("/mtls/echo"), &[]).await.status, 200);
}
