//! Response compression end to end: a property test over `Accept-Encoding` headers × response
//! kinds (the decoded body is always the upstream's, byte for byte, and the headers follow the
//! rules), validators and 304s through the gateway, and server-sent events flushed as they come.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::*;

const CODECS: [&str; 3] = ["zstd", "br", "gzip"];

fn config(up: &std::net::SocketAddr, compression: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nauth:\n  api_keys:\n    - {{ name: keys, keys: [{{ id: k1, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 }}] }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{up}\" }}] }}\nroutes:\n  - name: locked\n    match: {{ path: {{ prefix: /locked }} }}\n    upstream: up\n    auth: {{ api_key: keys }}\n    compression: {compression}\n  - name: api\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    compression: {compression}\n"
    )
}

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        "zstd" => out = zstd::stream::decode_all(data).expect("valid zstd"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// The q a header gives `coding` (explicit, else `*`, else 0), in thousandths — an oracle
/// written independently of the gateway's parser, for well-formed headers only.
fn q_of(elements: &[(String, Option<u16>)], coding: &str) -> u16 {
    let find = |name: &str| {
        elements
            .iter()
            .filter(|(n, _)| n == name || (name == "gzip" && n == "x-gzip"))
            .map(|(_, q)| q.unwrap_or(1000))
            .max()
    };
    find(coding).or_else(|| find("*")).unwrap_or(0)
}

fn random_accept(rng: &mut fastrand::Rng) -> (Option<String>, Vec<(String, Option<u16>)>) {
    if rng.u8(..10) == 0 {
        return (None, Vec::new());
    }
    let names = [
        "gzip", "br", "zstd", "x-gzip", "identity", "*", "deflate", "GZip",
    ];
    let qs = [None, Some(0), Some(1), Some(500), Some(1000), Some(999)];
    let mut elements = Vec::new();
    let mut text = Vec::new();
    for _ in 0..rng.usize(0..4) {
        let name = names[rng.usize(..names.len())];
        let q = qs[rng.usize(..qs.len())];
        text.push(match q {
            None => name.to_string(),
            Some(1000) => format!("{name};q=1"),
            Some(q) => format!("{name};q=0.{q:03}"),
        });
        elements.push((name.to_ascii_lowercase(), q));
    }
    (Some(text.join(", ")), elements)
}

#[tokio::test]
async fn decoded_bodies_are_the_upstreams_and_headers_follow_the_rules() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(
        &up.addr,
        "{ codecs: [zstd, br, gzip], min_bytes: 256 }",
    ))
    .await;
    let doc = json_document();
    let client = client();
    let mut rng = fastrand::Rng::with_seed(0x9110);
    // (path, method, compressible, upstream's body)
    let kinds: [(&str, Method, bool, Bytes); 8] = [
        ("/body/json", Method::GET, true, doc.clone()),
        ("/body/chunked-json", Method::GET, true, doc.clone()),
        ("/body/encoded", Method::GET, false, doc.clone()),
        ("/body/range", Method::GET, false, doc.slice(..1000)),
        ("/body/no-transform", Method::GET, false, doc.clone()),
        (
            "/body/tiny",
            Method::GET,
            false,
            Bytes::from_static(b"{\"ok\":true}"),
        ),
        ("/body/png", Method::GET, false, doc.clone()),
        ("/body/json", Method::HEAD, false, Bytes::new()),
    ];
    let mut compressed_seen = [0usize; 3];
    for case in 0..240 {
        let (accept, elements) = random_accept(&mut rng);
        let (path, method, compressible, expected) = &kinds[case % kinds.len()];
        let mut b = http::Request::builder()
            .method(method.clone())
            .uri(gw.url(path));
        if let Some(a) = &accept {
            b = b.header("accept-encoding", a);
        }
        let r = send(&client, b.body(Full::new(Bytes::new())).unwrap()).await;
        let what = format!("{method} {path} Accept-Encoding: {accept:?}");
        let vary = vary_tokens(&r.headers);
        assert_eq!(
            vary.iter().filter(|v| *v == "accept-encoding").count(),
            1,
            "{what}: Vary: Accept-Encoding once on every response of the route"
        );
        let coding = r
            .headers
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        let best = CODECS.iter().map(|c| q_of(&elements, c)).max().unwrap_or(0);
        let acceptable = accept.is_some() && best > 0;
        match coding.as_deref() {
            Some(c) if CODECS.contains(&c) && *path != "/body/encoded" => {
                assert!(
                    *compressible,
                    "{what}: compressed a response that must not be"
                );
                assert!(
                    acceptable,
                    "{what}: compressed though nothing was acceptable"
                );
                assert_eq!(
                    q_of(&elements, c),
                    best,
                    "{what}: {c} is not the client's highest q"
                );
                assert_eq!(decode(c, &r.body), expected.as_ref(), "{what}");
                assert!(
                    r.headers.get("content-length").is_none(),
                    "{what}: stale length"
                );
                assert!(r.headers.get("accept-ranges").is_none(), "{what}");
                if *path == "/body/json" {
                    assert_eq!(
                        r.headers["etag"], "W/\"v1\"",
                        "{what}: a strong ETag becomes weak"
                    );
                }
                compressed_seen[CODECS.iter().position(|x| x == &c).unwrap()] += 1;
            }
            Some("gzip") => {
                // Already encoded by the upstream: passed through untouched.
                assert_eq!(*path, "/body/encoded");
                assert_eq!(r.body, *expected, "{what}");
            }
            Some(other) => panic!("{what}: unexpected Content-Encoding {other}"),
            None => {
                assert!(
                    !(*compressible && acceptable),
                    "{what}: not compressed though it should be"
                );
                assert_eq!(r.body, *expected, "{what}: identity body changed");
                if *path == "/body/json" && *method == Method::GET {
                    assert_eq!(r.headers["etag"], "\"v1\"", "{what}: ETag kept strong");
                }
            }
        }
    }
    assert!(
        compressed_seen.iter().all(|n| *n > 0),
        "every codec was exercised: {compressed_seen:?}"
    );

    // The gateway's own answers on the route vary too.
    let r = get(
        &client,
        &gw.url("/locked/x"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    r.assert_gateway_error(401);
    assert!(r
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("accept-encoding")));
}

#[tokio::test]
async fn conditional_requests_still_get_304_through_the_gateway() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr, "{ codecs: [gzip] }")).await;
    let client = client();
    let r = get(
        &client,
        &gw.url("/body/json"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.headers["content-encoding"], "gzip");
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, "W/\"v1\"");
    let r = get(
        &client,
        &gw.url("/body/json"),
        &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status, 304, "the weak tag still validates");
    assert_eq!(
        r.headers["etag"], "W/\"v1\"",
        "the 304 names the tag the 200 had"
    );
    assert!(r.body.is_empty());
    // A client without gzip gets the strong tag, and its own conditional works as before.
    let r = get(
        &client,
        &gw.url("/body/json"),
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.headers["etag"], "\"v1\"");
}

/// An upstream sending server-sent events when the test says so.
async fn event_upstream() -> (std::net::SocketAddr, tokio::sync::mpsc::Sender<Bytes>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rx = rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let rx = rx.lock().unwrap().take();
                    async move {
                        let stream = futures_util::stream::unfold(rx, |rx| async move {
                            let mut rx = rx?;
                            let b = rx.recv().await?;
                            Some((
                                Ok::<_, std::io::Error>(hyper::body::Frame::data(b)),
                                Some(rx),
                            ))
                        });
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/event-stream")
                                .header("cache-control", "no-cache")
                                .body(http_body_util::StreamBody::new(stream))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, tx)
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_produced() {
    for codec in CODECS {
        let (addr, tx) = event_upstream().await;
        let gw = TestGateway::start(&config(
            &addr,
            &format!("{{ codecs: [{codec}], min_bytes: 1 }}"),
        ))
        .await;
        let req = http::Request::get(gw.url("/events"))
            .header("accept-encoding", codec)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.headers()["content-encoding"], codec);
        let mut body = resp.into_body();
        let mut compressed = Vec::new();
        let mut delays = Vec::new();
        for i in 0..7 {
            let event = format!("id: {i}\ndata: {{\"n\":{i}}}\n\n");
            let sent = Instant::now();
            tx.send(Bytes::from(event.clone())).await.unwrap();
            // Read until this event decodes: it must, before the upstream sends the next.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{codec}: event {i} never arrived (not flushed)"))
                    .expect("stream open")
                    .unwrap();
                if let Some(d) = frame.data_ref() {
                    compressed.extend_from_slice(d);
                }
                if decoded_prefix(codec, &compressed).ends_with(event.as_bytes()) {
                    break;
                }
            }
            delays.push(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tx);
        delays.sort();
        let median = delays[delays.len() / 2];
        println!("{codec}: event delay through the gateway, median {median:?}, all {delays:?}");
        assert!(
            median < Duration::from_millis(10),
            "{codec}: median event delay {median:?}"
        );
    }
}

/// What a streaming decoder has produced from `data` so far.
fn decoded_prefix(codec: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec {
        "gzip" => {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            let _ = d.write_all(data);
            let _ = d.flush();
            out = d.get_ref().clone();
        }
        "br" => {
            let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
            let _ = d.write_all(data);
            let _ = d.flush();
            out = d.get_ref().clone();
        }
        "zstd" => {
            let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
            let _ = d.write_all(data);
            let _ = d.flush();
            out = d.get_ref().clone();
        }
        _ => {}
    }
    out
}

#[test]
fn config_errors_name_the_key() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (compression, want) in [
        ("{ codecs: [gzip, lz4] }", "unknown codec `lz4`"),
        ("{ codecs: [gzip, gzip] }", "listed twice"),
        ("{ level: 12 }", "must be 1 (fastest) to 9"),
        ("{ content_types: [json] }", "not a media type"),
    ] {
        let text = portcullis::compile::text(&config(&up, compression), "c.yaml")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            text.contains("c.yaml:")
                && text.contains("routes[0].compression")
                && text.contains(want),
            "{compression}: {text}"
        );
    }
}
