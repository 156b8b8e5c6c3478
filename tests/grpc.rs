//! gRPC through the gateway with real gRPC libraries on both ends (tonic's client and its
//! server-side call handling, over hyper's h2c): unary and server-streaming calls with trailers
//! intact, and calls the gateway itself refuses answered as gRPC errors.

mod support;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use support::*;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// The test service's one message type (what `tonic-build` would generate from
/// `message Note { string text = 1; uint32 count = 2; }`).
#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type NoteStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Note, Status>>>;

/// `Echo`: the note back, with the X-Forwarded-For the upstream saw in its metadata;
/// "fail" → NOT_FOUND; "slow" → answers after 2 s.
struct Echo;

impl tonic::server::UnaryService<Note> for Echo {
    type Response = Note;
    type Future = BoxFuture<Result<tonic::Response<Note>, Status>>;

    fn call(&mut self, request: tonic::Request<Note>) -> Self::Future {
        Box::pin(async move {
            let forwarded = request
                .metadata()
                .get("x-forwarded-for")
                .cloned()
                .unwrap_or_else(|| "none".parse().unwrap());
            let note = request.into_inner();
            match note.text.as_str() {
                "fail" => return Err(Status::not_found("no such note")),
                "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
                _ => {}
            }
            let mut resp = tonic::Response::new(note);
            resp.metadata_mut().insert("seen-forwarded-for", forwarded);
            Ok(resp)
        })
    }
}

/// `Count`: `count` notes numbered 1..=count, then OK; text "abort" ends with ABORTED after
/// the notes instead.
struct Count;

impl tonic::server::ServerStreamingService<Note> for Count {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = BoxFuture<Result<tonic::Response<NoteStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Note>) -> Self::Future {
        Box::pin(async move {
            let note = request.into_inner();
            let mut items: Vec<Result<Note, Status>> = (1..=note.count)
                .map(|i| {
                    Ok(Note {
                        text: format!("{} #{i}", note.text),
                        count: i,
                    })
                })
                .collect();
            if note.text == "abort" {
                items.push(Err(Status::aborted("stopped on purpose")));
            }
            Ok(tonic::Response::new(futures_util::stream::iter(items)))
        })
    }
}

/// The gRPC service over h2c (prior knowledge), answering `/<any service>/Echo` and `/Count`.
async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
                    let resp = if req.uri().path().ends_with("/Echo") {
                        grpc.unary(Echo, req).await
                    } else if req.uri().path().ends_with("/Count") {
                        grpc.server_streaming(Count, req).await
                    } else {
                        Status::unimplemented("no such method").into_http()
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The same service over TLS (ALPN `h2` only), requiring a client certificate signed by the
/// CA `client_ca_der`: (address, the PEM of the CA that signed the server's certificate).
async fn grpc_server_tls(
    client_ca_der: rustls::pki_types::CertificateDer<'static>,
) -> (SocketAddr, String) {
    use rustls::pki_types::pem::PemObject;
    portcullis::tls::install_provider();
    let server_ca = ca("notes CA");
    let (_, leaf_key, leaf_der) = leaf(&server_ca, "notes", &["notes.internal"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca_der).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![leaf_der],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf_key.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
                    let resp = if req.uri().path().ends_with("/Echo") {
                        grpc.unary(Echo, req).await
                    } else {
                        grpc.server_streaming(Count, req).await
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, server_ca.pem)
}

const READ_KEY: &str = "grpc-read-key-0123456789";

fn config(up: SocketAddr) -> String {
    let read = hex::encode(Sha256::digest(READ_KEY.as_bytes()));
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
auth:
  api_keys:
    - name: clients
      keys: [{{ id: reader, sha256: {read}, tenant: acme, scopes: [notes:read] }}]
rate_limits:
  - {{ name: one-call, algorithm: token_bucket, capacity: 1, refill_per_second: 0.001, key: [route] }}
upstreams:
  - {{ name: notes, protocol: http2, targets: [{{ address: "{up}" }}] }}
  - {{ name: gone, protocol: http2, targets: [{{ address: "{gone}" }}] }}
routes:
  - name: open
    match: {{ path: {{ prefix: /open.Notes/ }} }}
    upstream: notes
  - name: keyed
    match: {{ path: {{ prefix: /keyed.Notes/ }} }}
    upstream: notes
    auth: {{ api_key: clients }}
  - name: scoped
    match: {{ path: {{ prefix: /scoped.Notes/ }} }}
    upstream: notes
    auth: {{ api_key: clients }}
    authorization: {{ required_scopes: [notes:write] }}
  - name: limited
    match: {{ path: {{ prefix: /limited.Notes/ }} }}
    upstream: notes
    rate_limits: [one-call]
  - name: down
    match: {{ path: {{ prefix: /down.Notes/ }} }}
    upstream: gone
  - name: slow
    match: {{ path: {{ prefix: /slow.Notes/ }} }}
    upstream: notes
    timeout_ms: 300
  - name: small
    match: {{ path: {{ prefix: /small.Notes/ }} }}
    upstream: notes
    request: {{ max_body_bytes: 16 }}
  - name: strict
    match: {{ path: {{ prefix: /strict.Notes/ }} }}
    upstream: notes
    request: {{ required_headers: [x-tenant] }}
"#,
        gone = closed_port()
    )
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn grpc_client(gw: &TestGateway) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .expect("h2c connection to the gateway");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    client: &mut Client,
    path: &'static str,
    request: tonic::Request<Note>,
) -> Result<tonic::Response<Note>, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await
}

fn note(text: &str, count: u32) -> tonic::Request<Note> {
    tonic::Request::new(Note {
        text: text.into(),
        count,
    })
}

#[tokio::test]
async fn unary_calls_pass_through_with_their_status_and_metadata() {
    let up = grpc_server().await;
    let gw = TestGateway::start(&config(up)).await;
    let mut client = grpc_client(&gw).await;

    let resp = unary(&mut client, "/open.Notes/Echo", note("hello", 7))
        .await
        .expect("unary call through the gateway");
    assert_eq!(
        resp.metadata().get("seen-forwarded-for").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(
        resp.into_inner(),
        Note {
            text: "hello".into(),
            count: 7
        }
    );

    // The upstream's own error status and message arrive intact (Trailers-Only from upstream).
    let err = unary(&mut client, "/open.Notes/Echo", note("fail", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such note");

    // An authenticated call.
    let mut req = note("keyed", 1);
    req.metadata_mut()
        .insert("x-api-key", READ_KEY.parse().unwrap());
    let resp = unary(&mut client, "/keyed.Notes/Echo", req).await.unwrap();
    assert_eq!(resp.into_inner().text, "keyed");
}

#[tokio::test]
async fn server_streaming_calls_keep_order_and_trailers() {
    let up = grpc_server().await;
    let gw = TestGateway::start(&config(up)).await;
    let mut client = grpc_client(&gw).await;
    let path = PathAndQuery::from_static("/open.Notes/Count");

    client.ready().await.unwrap();
    let resp = client
        .server_streaming(
            note("tick", 50),
            path.clone(),
            ProstCodec::<Note, Note>::default(),
        )
        .await
        .expect("stream opened");
    let mut stream = resp.into_inner();
    let mut got = Vec::new();
    while let Some(n) = stream.message().await.expect("clean end (grpc-status 0)") {
        got.push(n.count);
    }
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    let trailers = stream.trailers().await.unwrap().expect("trailers arrived");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // An error status after some messages travels in the trailers, after the data.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(note("abort", 3), path, ProstCodec::<Note, Note>::default())
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("stream ended without the ABORTED status"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, 3);
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.message(), "stopped on purpose");
}

#[tokio::test]
async fn calls_the_gateway_refuses_get_grpc_statuses() {
    let up = grpc_server().await;
    let gw = TestGateway::start(&config(up)).await;
    let mut client = grpc_client(&gw).await;

    let mut reader = note("x", 0);
    reader
        .metadata_mut()
        .insert("x-api-key", READ_KEY.parse().unwrap());
    let cases: Vec<(&'static str, tonic::Request<Note>, Code, &str)> = vec![
        (
            "/keyed.Notes/Echo",
            note("x", 0),
            Code::Unauthenticated,
            "unauthorized",
        ),
        (
            "/scoped.Notes/Echo",
            reader,
            Code::PermissionDenied,
            "forbidden",
        ),
        (
            "/down.Notes/Echo",
            note("x", 0),
            Code::Unavailable,
            "cannot connect",
        ),
        (
            "/slow.Notes/Echo",
            note("slow", 0),
            Code::DeadlineExceeded,
            "within 300 ms",
        ),
        (
            "/nowhere.Notes/Echo",
            note("x", 0),
            Code::Unimplemented,
            "no route",
        ),
    ];
    for (path, req, code, message) in cases {
        let err = unary(&mut client, path, req).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}: {err:?}");
        assert!(err.message().contains(message), "{path}: {err:?}");
    }
    // The rate limit lets one call through, then RESOURCE_EXHAUSTED.
    unary(&mut client, "/limited.Notes/Echo", note("x", 0))
        .await
        .unwrap();
    let err = unary(&mut client, "/limited.Notes/Echo", note("x", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("rate limit one-call exceeded"));

    // 413 (body over max_body_bytes) → RESOURCE_EXHAUSTED, 400 (a required header missing) →
    // INVALID_ARGUMENT, 431 (head over max_header_bytes) → RESOURCE_EXHAUSTED.
    let err = unary(&mut client, "/small.Notes/Echo", note(&"x".repeat(64), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("request body is larger than 16 bytes"),
        "{err:?}"
    );
    let err = unary(&mut client, "/strict.Notes/Echo", note("x", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("x-tenant"), "{err:?}");
    let mut big = note("x", 0);
    big.metadata_mut()
        .insert("x-padding", "p".repeat(3000).parse().unwrap());
    let small_heads = TestGateway::start(&config(up).replace(
        r#"listeners: [{ name: public, address: "127.0.0.1:0" }]"#,
        r#"listeners: [{ name: public, address: "127.0.0.1:0", limits: { max_header_bytes: 2048 } }]"#,
    ))
    .await;
    let mut small_client = grpc_client(&small_heads).await;
    let err = unary(&mut small_client, "/open.Notes/Echo", big)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("request headers are larger than 2048 bytes"),
        "{err:?}"
    );
}

#[tokio::test]
async fn gateway_grpc_errors_are_trailers_only_http_200_and_others_stay_json() {
    let up = grpc_server().await;
    let gw = TestGateway::start(&config(up)).await;
    let c = h2_client();
    let req = http::Request::post(gw.url("/keyed.Notes/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert_eq!(r.headers["grpc-status"], "16");
    assert!(r.headers["grpc-message"]
        .to_str()
        .unwrap()
        .starts_with("unauthorized"));
    assert!(r.headers.contains_key("x-request-id"));
    assert!(r.body.is_empty(), "Trailers-Only: no body");

    // The client's grpc-timeout shortens the route's timeout (1 minute by default). Sent by
    // hand: tonic's client would enforce its own deadline before the gateway's answer.
    let message = prost::Message::encode_to_vec(&Note {
        text: "slow".into(),
        count: 0,
    });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let req = http::Request::post(gw.url("/open.Notes/Echo"))
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers")
        .header("grpc-timeout", "150m")
        .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
        .unwrap();
    let started = std::time::Instant::now();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "4", "{:?}", r.headers);
    assert_eq!(
        r.headers["grpc-message"],
        "upstream did not answer within 150 ms"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // The same refusal to a non-gRPC request is the usual JSON 401.
    let r = get(&c, &gw.url("/keyed.Notes/Echo"), &[]).await;
    r.assert_gateway_error(401);
}

/// gRPC to a service behind TLS (`protocol: h2`: ALPN h2, the server name verified, the
/// gateway's client certificate presented); a certificate the service does not trust is
/// refused by it, and the caller gets UNAVAILABLE.
#[tokio::test]
async fn grpc_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let clients = ca("clients");
    let stranger = ca("stranger");
    let client_cert = |issuer: &Ca, name: &str| {
        let (cert, key, _) = leaf(issuer, "gateway", &["gateway.internal"]);
        let c = dir.path().join(format!("{name}.pem"));
        let k = dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c.display().to_string(), k.display().to_string())
    };
    let (good_cert, good_key) = client_cert(&clients, "good");
    let (bad_cert, bad_key) = client_cert(&stranger, "bad");
    let (up, server_ca) = grpc_server_tls(clients.der.clone()).await;
    let ca_file = dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, server_ca).unwrap();
    let ca_file = ca_file.display();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
upstreams:
  - name: notes
    protocol: h2
    tls: {{ server_name: notes.internal, ca_file: "{ca_file}", client_cert_file: "{good_cert}", client_key_file: "{good_key}" }}
    targets: [{{ address: "{up}" }}]
  - name: untrusted
    protocol: h2
    tls: {{ server_name: notes.internal, ca_file: "{ca_file}", client_cert_file: "{bad_cert}", client_key_file: "{bad_key}" }}
    targets: [{{ address: "{up}" }}]
routes:
  - name: open
    match: {{ path: {{ prefix: /open.Notes/ }} }}
    upstream: notes
  - name: untrusted
    match: {{ path: {{ prefix: /untrusted.Notes/ }} }}
    upstream: untrusted
"#
    );
    let gw = TestGateway::start(&yaml).await;
    let mut client = grpc_client(&gw).await;
    let resp = unary(&mut client, "/open.Notes/Echo", note("over tls", 3))
        .await
        .expect("unary call over TLS");
    assert_eq!(resp.into_inner().text, "over tls");
    let err = unary(&mut client, "/open.Notes/Echo", note("fail", 0))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the service's own status, through TLS"
    );
    // Server streaming over the TLS h2 connection, in order.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            note("n", 3),
            PathAndQuery::from_static("/open.Notes/Count"),
            ProstCodec::<Note, Note>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut counts = Vec::new();
    while let Some(n) = stream.message().await.unwrap() {
        counts.push(n.count);
    }
    assert!(
        !counts.is_empty() && counts.windows(2).all(|w| w[0] < w[1]),
        "{counts:?}"
    );
    let err = unary(&mut client, "/untrusted.Notes/Echo", note("x", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
