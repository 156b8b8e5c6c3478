//! The HTTP/2 limits the README promises, checked with hand-made frames on a raw socket (no
//! HTTP/2 library on the client side, so nothing smooths over what the gateway does): the
//! advertised settings, the 257th concurrent stream refused, a rapid-reset burst
//! (CVE-2023-44487), a CONTINUATION flood and a run of malformed streams each end with the
//! connection closed, and none of the refused requests reaches the upstream.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn get_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", "/"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        literal(&mut b, n, v);
    }
    b
}

struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// One HTTP/2 connection with prior knowledge, frame by frame.
struct RawH2 {
    stream: TcpStream,
    read: Vec<u8>,
    /// The server's first SETTINGS frame, as (identifier, value) pairs.
    settings: Vec<(u16, u32)>,
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.unwrap();
        let mut c = RawH2 {
            stream,
            read: Vec::new(),
            settings: Vec::new(),
        };
        let first = c
            .next(Duration::from_secs(5))
            .await
            .expect("the server's SETTINGS");
        assert_eq!(
            first.kind, SETTINGS,
            "the server's preface starts with SETTINGS"
        );
        c.settings = first
            .payload
            .chunks(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect();
        c.stream
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        c
    }

    /// Writes frames; `false` once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next frame, or `None` at end of stream (or a reset) or after `wait` with nothing.
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.read.len() >= 9 {
                let len = (self.read[0] as usize) << 16
                    | (self.read[1] as usize) << 8
                    | self.read[2] as usize;
                if self.read.len() >= 9 + len {
                    let f = Frame {
                        kind: self.read[3],
                        stream: u32::from_be_bytes(self.read[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.read[9..9 + len].to_vec(),
                    };
                    self.read.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut buf = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.read.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    }

    /// Every frame until the server closes the connection (bounded by `wait`); panics if the
    /// connection is still open then.
    async fn until_closed(&mut self, wait: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(f) => frames.push(f),
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "the connection was still open after {wait:?}"
                    );
                    return frames;
                }
            }
        }
    }
}

fn goaway(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .map(Frame::error_code)
}

fn config(up: &Upstream) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
defaults: {{ auth: none }}
upstreams:
  # The test upstream accepts on the test's own runtime, so a burst of 256 connects can
  # outrun its accept loop by a SYN retransmit (1 s): allow for it.
  - {{ name: up, connect_timeout_ms: 10000, targets: [{{ address: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path: {{ prefix: / }} }}, upstream: up }}
"#,
        up.addr
    )
}

#[tokio::test]
async fn the_settings_advertise_the_limits_and_the_257th_stream_is_refused() {
    // Answers after 3 s, so the first 256 streams are all open when the 257th arrives.
    let up = Upstream::start_with(
        "slow",
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3),
    )
    .await;
    let gw = TestGateway::start(&config(&up)).await;
    let mut c = RawH2::connect(gw.addr).await;
    let setting = |id: u16| c.settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(setting(0x3), Some(256), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(
        setting(0x6),
        Some(65536 + 4096),
        "SETTINGS_MAX_HEADER_LIST_SIZE = max_header_bytes + 4 KiB"
    );

    let mut burst = Vec::new();
    for i in 0..257u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block(&[]),
        ));
    }
    assert!(c.send(&burst).await);
    let last = 1 + 2 * 256;
    let mut refused = Vec::new();
    let mut answered = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.len() < 256 && Instant::now() < deadline {
        let Some(f) = c.next(Duration::from_secs(10)).await else {
            break;
        };
        match f.kind {
            RST_STREAM => refused.push((f.stream, f.error_code())),
            HEADERS => {
                answered.insert(f.stream);
            }
            GOAWAY => panic!("GOAWAY {:#x} under the stream limit", f.error_code()),
            _ => {}
        }
    }
    assert_eq!(
        refused,
        vec![(last, REFUSED_STREAM)],
        "only the 257th stream is refused, with REFUSED_STREAM"
    );
    assert_eq!(
        answered.len(),
        256,
        "the 256 streams within the limit are answered"
    );
    assert!(!answered.contains(&last));
    assert_eq!(
        up.count(),
        256,
        "the refused stream never reached the upstream"
    );
}

#[tokio::test]
async fn a_rapid_reset_burst_closes_the_connection() {
    let up = Upstream::start_with(
        "slow",
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
    )
    .await;
    let gw = TestGateway::start(&config(&up)).await;
    let mut c = RawH2::connect(gw.addr).await;
    // 1,000 requests each cancelled at once, in one write: what CVE-2023-44487 attackers send.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &get_block(&[]),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    c.send(&burst).await;
    let frames = c.until_closed(Duration::from_secs(10)).await;
    assert_eq!(
        goaway(&frames),
        Some(ENHANCE_YOUR_CALM),
        "the connection ends with GOAWAY(ENHANCE_YOUR_CALM)"
    );
    // The streams it did hand on were cancelled; far from all 1,000 were ever forwarded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.count() < 1000,
        "{} of 1000 reset streams were forwarded",
        up.count()
    );
    // The gateway still serves new connections.
    let mut fresh = RawH2::connect(gw.addr).await;
    assert!(
        fresh
            .send(&frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                1,
                &get_block(&[])
            ))
            .await
    );
    let mut got = None;
    while let Some(f) = fresh.next(Duration::from_secs(5)).await {
        if f.kind == HEADERS && f.stream == 1 {
            got = Some(f);
            break;
        }
    }
    assert!(
        got.is_some(),
        "a new connection is answered after the attack"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_at_the_header_limit() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up)).await;
    let mut c = RawH2::connect(gw.addr).await;
    assert!(
        c.send(&frame(HEADERS, END_STREAM, 1, &get_block(&[])))
            .await
    );
    // CONTINUATION frames of 16 KiB of headers each, never ending the block: without a cap the
    // server would buffer all of them. Send at most 16 MiB.
    let mut block = Vec::new();
    let mut n = 0;
    while block.len() < 16_000 {
        literal(&mut block, &format!("x-flood-{n}"), &"a".repeat(200));
        n += 1;
    }
    let chunk = frame(CONTINUATION, 0, 1, &block);
    let mut sent = 0usize;
    let mut closed = false;
    for _ in 0..1024 {
        if !c.send(&chunk).await {
            closed = true;
            break;
        }
        sent += chunk.len();
        // Stop writing once the server has said anything final.
        if let Some(f) = c.next(Duration::from_millis(1)).await {
            if f.kind == GOAWAY || f.kind == RST_STREAM {
                let frames = c.until_closed(Duration::from_secs(10)).await;
                let code = if f.kind == GOAWAY {
                    Some(f.error_code())
                } else {
                    goaway(&frames)
                };
                assert!(code.is_some(), "a GOAWAY ends the connection");
                closed = true;
                break;
            }
        }
    }
    if !closed {
        // Everything was written: the server must still end it.
        c.until_closed(Duration::from_secs(10)).await;
    }
    assert!(
        sent <= 1 << 20,
        "the server kept reading {sent} bytes of one header block"
    );
    assert_eq!(
        up.count(),
        0,
        "the flooding request never reached the upstream"
    );
}

#[tokio::test]
async fn malformed_streams_are_reset_and_a_flood_of_them_closes_the_connection() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up)).await;
    // `connection` is a connection-specific field: a malformed request (RFC 9113 §8.2.2), reset
    // by the gateway's HTTP/2 layer as a stream error while the connection goes on serving.
    let mut c = RawH2::connect(gw.addr).await;
    let mut few = Vec::new();
    for i in 0..10u32 {
        few.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block(&[("connection", "keep-alive")]),
        ));
    }
    few.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        21,
        &get_block(&[]),
    ));
    assert!(c.send(&few).await);
    let mut resets = Vec::new();
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answered && Instant::now() < deadline {
        let Some(f) = c.next(Duration::from_secs(5)).await else {
            break;
        };
        match f.kind {
            RST_STREAM => resets.push((f.stream, f.error_code())),
            HEADERS if f.stream == 21 => answered = true,
            GOAWAY => panic!("GOAWAY {:#x} after ten malformed streams", f.error_code()),
            _ => {}
        }
    }
    assert_eq!(
        resets,
        (0..10u32).map(|i| (1 + 2 * i, 0x1)).collect::<Vec<_>>(),
        "each malformed stream is reset with PROTOCOL_ERROR"
    );
    assert!(
        answered,
        "a well-formed stream on the same connection is served"
    );
    assert_eq!(
        up.count(),
        1,
        "only the well-formed request reached the upstream"
    );

    // A flood of malformed streams is an attack on the reset path (CVE-2023-44487's cousin):
    // past the pending-reset limit the connection is closed with ENHANCE_YOUR_CALM.
    let mut c = RawH2::connect(gw.addr).await;
    let mut burst = Vec::new();
    for i in 0..400u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &get_block(&[("connection", "keep-alive")]),
        ));
    }
    c.send(&burst).await;
    let frames = c.until_closed(Duration::from_secs(10)).await;
    assert!(
        frames
            .iter()
            .filter(|f| f.kind == RST_STREAM)
            .all(|f| f.error_code() == 0x1),
        "any stream reset before the close is a PROTOCOL_ERROR"
    );
    assert_eq!(goaway(&frames), Some(ENHANCE_YOUR_CALM));
    assert_eq!(up.count(), 1, "no malformed request reached the upstream");
}
