//! WebSocket proxying through real sockets: an echo server behind the gateway, the route's
//! auth and rate limits applied to the upgrade, upstream refusals passed on, and the listener's
//! idle timeout applied to open tunnels.
//! Its tests run one at a time (each takes `ALONE` first): the idle and shutdown tests time
//! closes.

mod support;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const KEY: &str = "ws-test-key-0123456789";

/// A WebSocket echo server that records each handshake's headers.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (h, hs) = (Arc::clone(&handshakes), Arc::clone(&headers));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, hs) = (Arc::clone(&h), Arc::clone(&hs));
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // the callback type tungstenite asks for
                    let record = |req: &WsRequest, resp: WsResponse| {
                        h.fetch_add(1, Ordering::SeqCst);
                        hs.lock().unwrap().push(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                        stream,
                        record,
                        Some(big_messages()),
                    )
                    .await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let echoed = match msg {
                            Message::Text(_) | Message::Binary(_) => ws.send(msg).await.is_ok(),
                            Message::Close(_) => false,
                            _ => true,
                        };
                        if !echoed {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            handshakes,
            headers,
        }
    }
}

fn big_messages() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

fn config(upstream: SocketAddr, listener_limits: &str) -> String {
    let key_hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0"{listener_limits} }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
auth:
  api_keys:
    - name: clients
      keys: [{{ id: one, sha256: {key_hash}, tenant: acme }}]
rate_limits:
  - {{ name: two-handshakes, algorithm: token_bucket, capacity: 2, refill_per_second: 0.001, key: [tenant] }}
upstreams:
  - {{ name: ws, targets: [{{ address: "{upstream}" }}] }}
routes:
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    upstream: ws
  - name: guarded
    match: {{ path: {{ prefix: /guarded }} }}
    upstream: ws
    auth: {{ api_key: clients }}
    rate_limits: [two-handshakes]
"#
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = format!("ws://{}{}", gw.addr, path)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async_with_config(req, Some(big_messages()), false)
        .await
        .map(|(ws, _)| ws)
}

async fn echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s")
        .expect("stream open")
        .expect("frame");
    assert_eq!(back, msg);
}

/// The refused handshake's HTTP response, as the client saw it.
fn refused(r: Result<Ws, WsError>) -> (u16, serde_json::Value, http::HeaderMap) {
    match r {
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (resp.status().as_u16(), json, resp.headers().clone())
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected the handshake to be refused"),
    }
}

#[tokio::test]
async fn echo_text_binary_and_a_mebibyte_both_ways() {
    let _alone = ALONE.lock().await;
    let echo_server = EchoServer::start().await;
    let gw = TestGateway::start(&config(echo_server.addr, "")).await;
    let mut ws = connect(&gw, "/open/chat", &[("x-client-cert-subject", "CN=spoof")])
        .await
        .expect("handshake through the gateway");
    echo(&mut ws, Message::text("hello through the gateway")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;
    echo(&mut ws, Message::text("x".repeat(1 << 20))).await;
    ws.close(None).await.unwrap();

    let seen = echo_server.headers.lock().unwrap()[0].clone();
    assert!(seen.contains_key("x-forwarded-for"), "{seen:?}");
    assert!(seen.contains_key("x-request-id"));
    assert!(
        !seen.contains_key("x-client-cert-subject"),
        "client-sent identity headers never pass"
    );
}

#[tokio::test]
async fn the_routes_auth_and_rate_limits_apply_to_the_upgrade() {
    let _alone = ALONE.lock().await;
    let echo_server = EchoServer::start().await;
    let gw = TestGateway::start(&config(echo_server.addr, "")).await;

    // No key, wrong key: 401 JSON from the gateway, the upstream never sees a handshake.
    for headers in [vec![], vec![("x-api-key", "not-the-key")]] {
        let (status, body, headers) = refused(connect(&gw, "/guarded/feed", &headers).await);
        assert_eq!(status, 401);
        assert!(body["error"].as_str().unwrap().contains("unauthorized"));
        assert!(body["request_id"].is_string());
        assert!(headers.contains_key("www-authenticate"));
    }
    assert_eq!(echo_server.handshakes.load(Ordering::SeqCst), 0);

    // With the key: accepted, and the key itself stays at the gateway.
    let mut ws = connect(&gw, "/guarded/feed", &[("x-api-key", KEY)])
        .await
        .expect("authenticated handshake");
    echo(&mut ws, Message::text("authenticated")).await;
    let seen = echo_server.headers.lock().unwrap()[0].clone();
    assert!(!seen.contains_key("x-api-key"));

    // The tenant's limit allows two handshakes; the third is refused with 429.
    let _second = connect(&gw, "/guarded/feed", &[("x-api-key", KEY)])
        .await
        .expect("second handshake");
    let (status, body, headers) =
        refused(connect(&gw, "/guarded/feed", &[("x-api-key", KEY)]).await);
    assert_eq!(status, 429);
    assert!(body["error"].as_str().unwrap().contains("rate limit"));
    assert!(headers.contains_key("retry-after"));
    assert_eq!(echo_server.handshakes.load(Ordering::SeqCst), 2);
    // The open tunnel is unaffected by the refusals.
    echo(&mut ws, Message::text("still open")).await;
}

#[tokio::test]
async fn an_upstream_that_refuses_the_upgrade_is_answered_as_it_said() {
    let _alone = ALONE.lock().await;
    let plain = serve_on("127.0.0.1:0".parse().unwrap(), |req| async move {
        let body = format!(
            "no websockets here (upgrade header: {:?})",
            req.headers().get("upgrade").is_some()
        );
        respond(403, body)
    })
    .await;
    let gw = TestGateway::start(&config(plain, "")).await;
    match connect(&gw, "/open/chat", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap()).unwrap();
            assert_eq!(
                body, "no websockets here (upgrade header: true)",
                "the upstream's own answer, to an upgrade request"
            );
        }
        other => panic!("expected the upstream's 403, got {:?}", other.map(|_| ())),
    }
    // The gateway still serves ordinary requests on that route.
    assert_eq!(get(&client(), &gw.url("/open/x"), &[]).await.status, 403);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_listeners_idle_timeout() {
    let _alone = ALONE.lock().await;
    let echo_server = EchoServer::start().await;
    let gw = TestGateway::start(&config(
        echo_server.addr,
        ", limits: { idle_timeout_ms: 400 }",
    ))
    .await;
    let mut ws = connect(&gw, "/open/chat", &[]).await.unwrap();
    // Traffic every 150 ms keeps the tunnel open well past the timeout...
    let started = std::time::Instant::now();
    loop {
        echo(&mut ws, Message::text("tick")).await;
        if started.elapsed() > Duration::from_millis(1200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ...and silence closes it: the client sees the stream end (no close frame: the gateway
    // drops the connection), within 1.25 × 400 ms.
    let quiet = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("tunnel closed within 5 s");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert_closed_on_time(quiet.elapsed(), Duration::from_millis(400));
}

#[tokio::test]
async fn open_tunnels_count_against_max_connections() {
    let _alone = ALONE.lock().await;
    let echo_server = EchoServer::start().await;
    let gw = TestGateway::start(&config(
        echo_server.addr,
        ", limits: { max_connections: 2 }",
    ))
    .await;
    let mut a = connect(&gw, "/open/a", &[]).await.unwrap();
    let mut b = connect(&gw, "/open/b", &[]).await.unwrap();
    echo(&mut a, Message::text("a")).await;
    echo(&mut b, Message::text("b")).await;
    // Both tunnels are open: a third connection is closed at once, before any HTTP answer.
    match connect(&gw, "/open/c", &[]).await {
        Err(WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
        Err(WsError::Protocol(p)) => assert!(
            matches!(
                p,
                tokio_tungstenite::tungstenite::error::ProtocolError::HandshakeIncomplete
            ),
            "{p:?}"
        ),
        other => panic!("a third connection got {other:?}"),
    }
    // Closing one frees its slot.
    a.close(None).await.unwrap();
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut c) = connect(&gw, "/open/c", &[]).await {
            echo(&mut c, Message::text("c")).await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo(&mut b, Message::text("b again")).await;
}

/// SIGTERM closes open tunnels at once instead of letting them hold the drain: a WebSocket can
/// stay open for hours, so waiting for it would turn every shutdown into `drain_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_tunnels_and_the_process_exits_before_the_drain_timeout() {
    let _alone = ALONE.lock().await;
    let echo_server = EchoServer::start().await;
    let yaml = config(echo_server.addr, "")
        .replace("127.0.0.1:0\" }]\nadmin", "{LISTEN}\" }]\nadmin")
        .replace(
            "admin: { address: \"127.0.0.1:0\" }",
            "admin: { address: \"{ADMIN}\" }",
        )
        .replace(
            "defaults: { auth: none }",
            "defaults: { auth: none, drain_timeout_ms: 5000 }",
        );
    assert!(
        yaml.contains("{LISTEN}") && yaml.contains("drain_timeout_ms"),
        "{yaml}"
    );
    let mut gw = GatewayProcess::spawn(&yaml, 1).await;
    let req = format!("ws://{}/open", gw.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    echo(&mut ws, Message::Text("before".into())).await;

    gw.signal(libc::SIGTERM);
    let term = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(4), ws.next()).await;
    if let Ok(Some(Ok(frame))) = &ended {
        assert!(
            matches!(frame, Message::Close(_)),
            "unexpected frame after SIGTERM: {frame:?}"
        );
    }
    assert!(ended.is_ok(), "the tunnel was still open 4 s after SIGTERM");
    let closed_after = term.elapsed();
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        term.elapsed() < Duration::from_secs(2),
        "exited {:?} after SIGTERM (tunnel closed after {closed_after:?}); an open tunnel must \
         not hold the 5 s drain",
        term.elapsed()
    );
}
