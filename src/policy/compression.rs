//! `compression`: response compression negotiated by `Accept-Encoding` (RFC 9110 §12.5.3),
//! as a response-body filter that flushes with every upstream chunk (server-sent events and
//! NDJSON arrive as they are produced).
//!
//! - Negotiation: q-values, `q=0` excludes, `*` stands for every coding not named, ties go to
//!   the configured order. When nothing configured is acceptable the response is sent as it
//!   is (identity) — RFC 9110 §12.5.3 lets a server disregard the header instead of a 406, and
//!   a gateway turning an upstream's 200 into a 406 would break clients that ask for
//!   `identity;q=0` but cope with identity.
//! - Never compressed: responses already encoded, 206 / `Content-Range`, `Cache-Control:
//!   no-transform`, HEAD, 1xx/204/304, gRPC, bodies under `min_bytes`, media types not listed.
//! - `Vary: Accept-Encoding` on every response of the route, compressed or not. A strong
//!   `ETag` of a compressed response becomes weak (the bytes differ from the upstream's), and
//!   `If-None-Match` is sent upstream with the weak marks removed, so validators keep working
//!   (weak comparison ignores the mark: RFC 9110 §13.1.2).

use crate::body::filter::{BodyFilter, Emit, FilterError};
use crate::config::{Compression as CompressionConfig, Diag, Located};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use std::io::Write;

/// Brotli and zstd windows are bounded so that one compressed response holds at most a few
/// hundred KiB of encoder state whatever its size (their defaults reach several MiB).
const WINDOW_LOG: u32 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Br,
    Gzip,
}

impl Codec {
    pub fn token(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Br => "br",
            Codec::Gzip => "gzip",
        }
    }

    fn parse(s: &str) -> Option<Codec> {
        match s {
            "zstd" => Some(Codec::Zstd),
            "br" => Some(Codec::Br),
            "gzip" => Some(Codec::Gzip),
            _ => None,
        }
    }
}

/// A listed media type: `type/subtype`, `type/*`, or a structured suffix `*/*+json`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaRule {
    Exact(String),
    /// `text/`
    Type(String),
    /// `+json`
    Suffix(String),
}

/// Text, JSON, JavaScript, XML, SVG and wasm.
const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "*/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/xml",
    "*/*+xml",
    "image/svg+xml",
    "application/wasm",
];

pub const DEFAULT_MIN_BYTES: u64 = 256;
pub const DEFAULT_LEVEL: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionPolicy {
    codecs: Vec<Codec>,
    min_bytes: u64,
    types: Vec<MediaRule>,
    level: u32,
}

impl CompressionPolicy {
    pub fn build(
        c: &Located<CompressionConfig>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<CompressionPolicy> {
        let mark = diag.mark();
        let mut codecs = Vec::new();
        match &c.codecs {
            None => codecs = vec![Codec::Zstd, Codec::Br, Codec::Gzip],
            Some(list) => {
                if list.value.is_empty() {
                    diag.err(
                        list.line,
                        format!("{key}.codecs"),
                        "list at least one of zstd, br, gzip (or remove `compression`)",
                    );
                }
                for name in &list.value {
                    match Codec::parse(name) {
                        Some(codec) if codecs.contains(&codec) => diag.err(
                            list.line,
                            format!("{key}.codecs"),
                            format!("`{name}` is listed twice"),
                        ),
                        Some(codec) => codecs.push(codec),
                        None => diag.err(
                            list.line,
                            format!("{key}.codecs"),
                            format!("unknown codec `{name}` (zstd, br, gzip)"),
                        ),
                    }
                }
            }
        }
        let mut types = Vec::new();
        let listed: Vec<String> = match &c.content_types {
            None => DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            Some(list) => list
                .value
                .iter()
                .map(|t| t.0.to_ascii_lowercase())
                .collect(),
        };
        let types_line = c.content_types.as_ref().map_or(c.line, |l| l.line);
        for t in &listed {
            match media_rule(t) {
                Some(rule) => types.push(rule),
                None => diag.err(
                    types_line,
                    format!("{key}.content_types"),
                    format!("`{t}` is not a media type (`type/subtype`, `type/*` or `*/*+suffix`)"),
                ),
            }
        }
        let level = c.level.as_ref().map_or(DEFAULT_LEVEL, |l| l.value);
        if let Some(l) = &c.level {
            if !(1..=9).contains(&l.value) {
                diag.err(
                    l.line,
                    format!("{key}.level"),
                    "must be 1 (fastest) to 9 (smallest); it is used as the level of each codec",
                );
            }
        }
        diag.ok_since(
            mark,
            CompressionPolicy {
                codecs,
                min_bytes: c.min_bytes.as_ref().map_or(DEFAULT_MIN_BYTES, |m| m.value),
                types,
                level,
            },
        )
    }

    /// The codec for a request's `Accept-Encoding` (RFC 9110 §12.5.3), `None` for identity.
    pub fn negotiate(&self, accept: &HeaderMap) -> Option<Codec> {
        negotiate(&self.codecs, accept)
    }

    /// Phase 10: `If-None-Match` without weak marks, so an upstream that compares entity tags
    /// byte for byte still answers 304 to the weak tag a compressed response carried.
    pub fn prepare_request(&self, headers: &mut HeaderMap) {
        let Some(v) = headers.get(header::IF_NONE_MATCH) else {
            return;
        };
        let Ok(s) = v.to_str() else { return };
        if !s.contains("W/") {
            return;
        }
        let strong: Vec<&str> = s
            .split(',')
            .map(|t| t.trim())
            .map(|t| t.strip_prefix("W/").unwrap_or(t))
            .collect();
        if let Ok(v) = HeaderValue::from_str(&strong.join(", ")) {
            headers.insert(header::IF_NONE_MATCH, v);
        }
    }

    /// Phase 13: whether to compress this response, and with what. `codec` is what the
    /// request negotiated. On yes, the head is changed for the compressed body (Content-Encoding,
    /// weak ETag, no Content-Length or Accept-Ranges).
    pub fn start(
        &self,
        codec: Codec,
        head_request: bool,
        head: &mut http::response::Parts,
    ) -> Option<Box<dyn BodyFilter>> {
        if head.status == StatusCode::NOT_MODIFIED {
            // The 304 carries the validator the full response would have had. A 304 usually
            // has no Content-Type: then only the coding and transform rules can say no.
            let untyped = !head.headers.contains_key(header::CONTENT_TYPE);
            if self.compressible_as(&head.headers, untyped) {
                weaken_etag(&mut head.headers);
            }
            return None;
        }
        if head_request
            || head.status.is_informational()
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::PARTIAL_CONTENT
            || head.headers.contains_key(header::CONTENT_RANGE)
            || !self.compressible(&head.headers)
        {
            return None;
        }
        if let Some(len) = content_length(&head.headers) {
            if len < self.min_bytes {
                return None;
            }
        }
        weaken_etag(&mut head.headers);
        head.headers.remove(header::ACCEPT_RANGES);
        head.headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(codec.token()),
        );
        Some(Box::new(Compressor::new(codec, self.level)))
    }

    /// Everything but the status and the body size: coding, transform rules, media type.
    fn compressible(&self, h: &HeaderMap) -> bool {
        self.compressible_as(h, false)
    }

    /// As `compressible`; `any_type` skips the media-type test.
    fn compressible_as(&self, h: &HeaderMap, any_type: bool) -> bool {
        let encoded = h
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        if encoded || no_transform {
            return false;
        }
        if any_type {
            return true;
        }
        let Some(media) = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        // gRPC frames its own messages (and compresses them itself).
        if media.starts_with("application/grpc") {
            return false;
        }
        self.types.iter().any(|rule| match rule {
            MediaRule::Exact(t) => *t == media,
            MediaRule::Type(prefix) => media.starts_with(prefix.as_str()),
            MediaRule::Suffix(suffix) => media.ends_with(suffix.as_str()),
        })
    }
}

fn media_rule(t: &str) -> Option<MediaRule> {
    let (ty, sub) = t.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if ty == "*" {
        let suffix = sub.strip_prefix("*+")?;
        return token(suffix).then(|| MediaRule::Suffix(format!("+{suffix}")));
    }
    if !token(ty) {
        return None;
    }
    if sub == "*" {
        return Some(MediaRule::Type(format!("{ty}/")));
    }
    token(sub).then(|| MediaRule::Exact(t.to_string()))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn weaken_etag(h: &mut HeaderMap) {
    let Some(tag) = h.get(header::ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"\"") {
        let mut weak = Vec::with_capacity(tag.len() + 2);
        weak.extend_from_slice(b"W/");
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, v);
        }
    }
}

/// The q-value (in thousandths) of one `Accept-Encoding` element's parameters, `None` when
/// malformed (RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`).
fn qvalue(params: &str) -> Option<u16> {
    let mut q = 1000;
    for p in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (int, frac) = value.split_once('.').unwrap_or((value, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_n: u16 = format!("{frac:0<3}").parse().ok()?;
        q = match int {
            "0" => frac_n,
            "1" if frac_n == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// RFC 9110 §12.5.3 over the configured codecs. No `Accept-Encoding` is treated as identity
/// only (the RFC allows any coding, but clients that send none rarely decode one).
pub fn negotiate(codecs: &[Codec], headers: &HeaderMap) -> Option<Codec> {
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    let mut any_header = false;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        any_header = true;
        let s = v.to_str().ok()?;
        for element in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (coding, params) = element.split_once(';').unwrap_or((element, ""));
            let Some(q) = qvalue(params) else {
                // A malformed element says nothing usable; the others still count.
                continue;
            };
            let coding = coding.trim().to_ascii_lowercase();
            let slot = match coding.as_str() {
                "*" => {
                    star = Some(star.map_or(q, |s| s.max(q)));
                    continue;
                }
                // RFC 9110 §8.4.1.3: x-gzip is gzip.
                "gzip" | "x-gzip" => 2,
                "br" => 1,
                "zstd" => 0,
                _ => continue,
            };
            named[slot] = Some(named[slot].map_or(q, |n| n.max(q)));
        }
    }
    if !any_header {
        return None;
    }
    let mut best: Option<(Codec, u16)> = None;
    for &codec in codecs {
        let slot = match codec {
            Codec::Zstd => 0,
            Codec::Br => 1,
            Codec::Gzip => 2,
        };
        let q = named[slot].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((codec, q));
        }
    }
    best.map(|(c, _)| c)
}

/// One response's encoder. Every upstream chunk is compressed and flushed at once, so what
/// the client receives never waits for more input.
struct Compressor {
    encoder: Option<Encoder>,
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    fn new(codec: Codec, level: u32) -> Compressor {
        let encoder = match codec {
            Codec::Gzip => Some(Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            ))),
            Codec::Br => Some(Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level,
                WINDOW_LOG,
            )))),
            Codec::Zstd => zstd::stream::write::Encoder::new(Vec::new(), level as i32)
                .and_then(|mut e| {
                    e.window_log(WINDOW_LOG)?;
                    Ok(e)
                })
                .ok()
                .map(Encoder::Zstd),
        };
        Compressor { encoder }
    }
}

fn failed(e: std::io::Error) -> FilterError {
    FilterError::Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("compression failed: {e}"),
    }
}

impl BodyFilter for Compressor {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
        let out_buf = match self.encoder.as_mut() {
            Some(Encoder::Gzip(e)) => {
                e.write_all(&chunk)
                    .and_then(|_| e.flush())
                    .map_err(failed)?;
                e.get_mut()
            }
            Some(Encoder::Br(e)) => {
                e.write_all(&chunk)
                    .and_then(|_| e.flush())
                    .map_err(failed)?;
                e.get_mut()
            }
            Some(Encoder::Zstd(e)) => {
                e.write_all(&chunk)
                    .and_then(|_| e.flush())
                    .map_err(failed)?;
                e.get_mut()
            }
            None => return Err(failed(std::io::Error::other("no encoder"))),
        };
        out.push(Bytes::from(std::mem::take(out_buf)));
        Ok(())
    }

    fn end(
        &mut self,
        _trailers: Option<&mut HeaderMap>,
        out: &mut Emit,
    ) -> Result<(), FilterError> {
        let rest = match self.encoder.take() {
            Some(Encoder::Gzip(e)) => e.finish().map_err(failed)?,
            Some(Encoder::Br(e)) => e.into_inner(),
            Some(Encoder::Zstd(e)) => e.finish().map_err(failed)?,
            None => Vec::new(),
        };
        out.push(Bytes::from(rest));
        Ok(())
    }

    fn changes_length(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    const ALL: &[Codec] = &[Codec::Zstd, Codec::Br, Codec::Gzip];

    #[test]
    fn negotiation_by_rfc_9110() {
        for (header, want) in [
            ("gzip", Some(Codec::Gzip)),
            ("GZIP", Some(Codec::Gzip)),
            ("x-gzip", Some(Codec::Gzip)),
            ("gzip, br", Some(Codec::Br)),
            ("gzip, br, zstd", Some(Codec::Zstd)),
            ("gzip;q=1, br;q=0.5", Some(Codec::Gzip)),
            ("br;q=0.8, gzip;q=0.9", Some(Codec::Gzip)),
            ("*", Some(Codec::Zstd)),
            ("*;q=0.5, br", Some(Codec::Br)),
            ("*, zstd;q=0", Some(Codec::Br)),
            ("gzip;q=0", None),
            ("identity", None),
            ("", None),
            ("identity;q=0", None),
            ("*;q=0", None),
            ("gzip;q=1.5, br", Some(Codec::Br)),
            ("gzip;q=0.001", Some(Codec::Gzip)),
            ("gzip;q=0.0001", None),
            ("deflate, compress", None),
            ("br;q=0.5, br;q=0", Some(Codec::Br)),
        ] {
            assert_eq!(negotiate(ALL, &accept(header)), want, "{header:?}");
        }
        assert_eq!(negotiate(ALL, &HeaderMap::new()), None, "no header");
        // Ties go to the configured order.
        assert_eq!(
            negotiate(&[Codec::Gzip, Codec::Br], &accept("br, gzip")),
            Some(Codec::Gzip)
        );
    }

    fn roundtrip(codec: Codec, chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = Compressor::new(codec, 4);
        let mut emit = Emit::default();
        for ch in chunks {
            c.data(Bytes::copy_from_slice(ch), &mut emit).unwrap();
        }
        c.end(None, &mut emit).unwrap();
        let compressed: Vec<u8> = emit.into_chunks().concat();
        decode(codec, &compressed)
    }

    pub fn decode(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            Codec::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Codec::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Codec::Zstd => {
                out = zstd::stream::decode_all(data).unwrap();
            }
        }
        out
    }

    #[test]
    fn each_codec_round_trips_and_flushes_every_chunk() {
        for codec in [Codec::Gzip, Codec::Br, Codec::Zstd] {
            let parts: &[&[u8]] = &[b"data: one\n\n", b"", b"data: two\n\n", &[b'x'; 70_000]];
            assert_eq!(roundtrip(codec, parts), parts.concat(), "{codec:?}");
            // A flushed first chunk decodes on its own (what an SSE client sees first).
            let mut c = Compressor::new(codec, 4);
            let mut emit = Emit::default();
            c.data(Bytes::from_static(b"data: first\n\n"), &mut emit)
                .unwrap();
            let first: Vec<u8> = emit.into_chunks().concat();
            assert!(!first.is_empty(), "{codec:?} emitted nothing on flush");
            let partial = match codec {
                Codec::Gzip => {
                    let mut d = flate2::read::GzDecoder::new(&first[..]);
                    let mut buf = [0u8; 64];
                    let n = d.read(&mut buf).unwrap();
                    buf[..n].to_vec()
                }
                Codec::Br => {
                    let mut d = brotli::Decompressor::new(&first[..], 4096);
                    let mut buf = [0u8; 64];
                    let n = d.read(&mut buf).unwrap();
                    buf[..n].to_vec()
                }
                Codec::Zstd => {
                    let mut d = zstd::stream::read::Decoder::new(&first[..]).unwrap();
                    let mut buf = [0u8; 64];
                    let n = d.read(&mut buf).unwrap();
                    buf[..n].to_vec()
                }
            };
            assert_eq!(partial, b"data: first\n\n", "{codec:?}");
        }
    }

    #[test]
    fn media_types() {
        let p = CompressionPolicy {
            codecs: ALL.to_vec(),
            min_bytes: 0,
            types: DEFAULT_TYPES
                .iter()
                .map(|t| media_rule(t).unwrap())
                .collect(),
            level: 4,
        };
        let with = |ct: &str, extra: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            for (k, v) in extra {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            p.compressible(&h)
        };
        assert!(with("application/json; charset=utf-8", &[]));
        assert!(with("Text/HTML", &[]));
        assert!(with("application/problem+json", &[]));
        assert!(with("image/svg+xml", &[]));
        assert!(!with("image/png", &[]));
        assert!(!with("application/grpc+json", &[]));
        assert!(!with("application/json", &[("content-encoding", "gzip")]));
        assert!(!with(
            "application/json",
            &[("cache-control", "public, No-Transform")]
        ));
        assert!(with(
            "application/json",
            &[("content-encoding", "identity")]
        ));
        assert!(
            !p.compressible(&HeaderMap::new()),
            "no type: unknown, left alone"
        );
        assert_eq!(media_rule("text"), None);
        assert_eq!(media_rule("*/*"), None);
    }
}
