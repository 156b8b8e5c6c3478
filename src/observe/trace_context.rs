//! W3C Trace Context (Level 2): continue a valid incoming `traceparent` with the gateway's own
//! span id, start a new trace otherwise, and pass `tracestate` on within the spec's limits.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_TRACESTATE_BYTES: usize = 512;
/// When tracestate must be shortened, members longer than this go first (spec §3.3.1.5).
const LONG_MEMBER: usize = 128;

/// The trace this request belongs to, as the gateway forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span: the parent-id sent upstream.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    /// Passed upstream only when the incoming traceparent was valid.
    pub tracestate: Option<String>,
}

/// Flag bits: sampled (Level 1) and random-trace-id (Level 2).
const SAMPLED: u8 = 0x01;
const RANDOM_TRACE_ID: u8 = 0x02;

/// Decides the sampled flag: by trace-id ratio for new traces, and for continued ones too when
/// not `parent_based` (then the caller's flag is ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Traces whose lowest 56 bits of trace id are below this are sampled (the W3C Level 2
    /// random part of the id, so every hop with the same ratio decides alike).
    threshold: u64,
    pub parent_based: bool,
}

const RANDOM_BITS: u32 = 56;

impl Sampler {
    /// Every new trace is sampled and a caller's decision is kept.
    pub const ALWAYS: Sampler = Sampler {
        threshold: 1 << RANDOM_BITS,
        parent_based: true,
    };

    pub fn ratio(ratio: f64, parent_based: bool) -> Sampler {
        let ratio = ratio.clamp(0.0, 1.0);
        Sampler {
            threshold: (ratio * (1u64 << RANDOM_BITS) as f64) as u64,
            parent_based,
        }
    }

    fn flag(&self, trace_id: &[u8; 16]) -> u8 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let random = u64::from_be_bytes(low) & ((1 << RANDOM_BITS) - 1);
        if random < self.threshold {
            SAMPLED
        } else {
            0
        }
    }
}

fn hex_lower(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 || !hex_lower(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let v = |c: u8| {
            if c.is_ascii_digit() {
                c - b'0'
            } else {
                c - b'a' + 10
            }
        };
        out[i] = v(pair[0]) << 4 | v(pair[1]);
    }
    Some(out)
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn encode(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let r = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

/// Parses a traceparent value by the version rules: version 00 must be exactly 55 characters;
/// a higher version is read by the 00 layout and may carry more fields after a `-`; `ff` is
/// never valid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version = decode::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = decode::<16>(&v[3..35])?;
    let parent_id = decode::<8>(&v[36..52])?;
    let flags = decode::<1>(&v[53..55])?[0];
    if trace_id.iter().all(|b| *b == 0) || parent_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Trace Context Level 2 §3.3.1.3.1: `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`, `keychar
/// = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"` (the Level 1 `tenant@system` keys are a
/// subset).
fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(c))
}

fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|c| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=')
        && b[b.len() - 1] != b' '
}

/// Validates and normalizes tracestate (all header lines joined by `,`): `None` when any member
/// is malformed or there are more than 32 members; a key that repeats keeps its first member
/// (the list is still propagated); shortened to 512 bytes by the spec's rule (long members
/// first, then from the end).
pub fn parse_tracestate(values: &[&str]) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for v in values {
        for m in v.split(',') {
            let m = m.trim_matches(|c| c == ' ' || c == '\t');
            if m.is_empty() {
                continue;
            }
            let (k, val) = m.split_once('=')?;
            if !valid_key(k) || !valid_value(val) {
                return None;
            }
            let repeated = members
                .iter()
                .any(|p| p.split_once('=').map(|x| x.0) == Some(k));
            if !repeated {
                members.push(m);
            }
        }
    }
    if members.is_empty() || members.len() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    let joined_len =
        |ms: &[&str]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    while joined_len(&members) > MAX_TRACESTATE_BYTES {
        match members.iter().rposition(|m| m.len() > LONG_MEMBER) {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    (!members.is_empty()).then(|| members.join(","))
}

impl TraceContext {
    /// The context for a request with these headers; `sampler` sets the sampled flag.
    pub fn from_headers(headers: &HeaderMap, sampler: &Sampler) -> TraceContext {
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let incoming = match (parents.next(), parents.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            // Absent, or more than one: not a trace to continue.
            _ => None,
        };
        match incoming {
            Some((trace_id, parent_id, flags)) => {
                let states: Vec<&str> = headers
                    .get_all(TRACESTATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                TraceContext {
                    trace_id,
                    span_id: random_nonzero(),
                    parent_id: Some(parent_id),
                    // Only the flags version 00 defines are forwarded.
                    flags: if sampler.parent_based {
                        flags & (SAMPLED | RANDOM_TRACE_ID)
                    } else {
                        flags & RANDOM_TRACE_ID | sampler.flag(&trace_id)
                    },
                    tracestate: if states.is_empty() {
                        None
                    } else {
                        parse_tracestate(&states)
                    },
                }
            }
            None => {
                let trace_id = random_nonzero();
                TraceContext {
                    trace_id,
                    span_id: random_nonzero(),
                    parent_id: None,
                    flags: sampler.flag(&trace_id) | RANDOM_TRACE_ID,
                    tracestate: None,
                }
            }
        }
    }

    pub fn trace_id_hex(&self) -> String {
        String::from_utf8(self.trace_id_hex_bytes().to_vec()).expect("hex is ASCII")
    }

    pub fn trace_id_hex_bytes(&self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        encode(&self.trace_id, &mut buf);
        buf
    }

    /// Whether this request's span is recorded (the sampled flag sent upstream).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as a header value.
    pub fn trace_id_header(&self) -> HeaderValue {
        let mut buf = [0u8; 32];
        encode(&self.trace_id, &mut buf);
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }

    /// The traceparent sent upstream: version 00 with the gateway's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        encode(&self.trace_id, &mut buf[3..35]);
        encode(&self.span_id, &mut buf[36..52]);
        encode(&[self.flags], &mut buf[53..55]);
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }

    /// Replaces the client's trace headers with the gateway's.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        match self.tracestate.as_deref().map(HeaderValue::from_str) {
            Some(Ok(v)) => {
                headers.insert(TRACESTATE, v);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ctx(tp: &[&str], ts: &[&str]) -> TraceContext {
        let mut h = HeaderMap::new();
        for v in tp {
            h.append(TRACEPARENT, v.parse().unwrap());
        }
        for v in ts {
            h.append(TRACESTATE, v.parse().unwrap());
        }
        TraceContext::from_headers(&h, &Sampler::ALWAYS)
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let c = ctx(&[VALID], &["congo=t61rcWkgMzE"]);
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(c.span_id, c.parent_id.unwrap());
        let tp = c.traceparent();
        let tp = tp.to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
            "{tp}"
        );
        assert_eq!(c.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace_and_drop_tracestate() {
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", // too short
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", // short parent id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with extra data
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", // bad flags
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // bad version
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", // bad separators
        ] {
            let c = ctx(&[bad], &["congo=t61rcWkgMzE"]);
            assert_ne!(
                c.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(c.parent_id, None, "{bad}");
            assert_eq!(c.tracestate, None, "{bad}");
        }
        // Two traceparent headers: not continued either.
        assert_eq!(ctx(&[VALID, VALID], &[]).parent_id, None);
    }

    #[test]
    fn future_versions_are_read_by_the_00_layout() {
        let c = ctx(
            &["cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"],
            &[],
        );
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(c.traceparent().to_str().unwrap().starts_with("00-"));
        let c = ctx(
            &["cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"],
            &[],
        );
        assert_eq!(c.parent_id, None, "extra data must follow a dash");
    }

    #[test]
    fn tracestate_limits() {
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate(&[&members.join(",")]), None, "33 members");
        assert!(parse_tracestate(&[&members[..32].join(",")]).is_some());
        assert_eq!(
            parse_tracestate(&["a=1,a=2"]).as_deref(),
            Some("a=1"),
            "a repeated key keeps its first member"
        );
        assert_eq!(parse_tracestate(&["foo=1,foo=1"]).as_deref(), Some("foo=1"));
        // Level 2 keys: `@` anywhere after the first character, up to 256 characters.
        let long_key = format!("{}@{}", "t".repeat(241), "s".repeat(14));
        for key in [
            "foo@",
            "foo@@bar",
            "0tenant@vendor",
            long_key.as_str(),
            "a/b*c_d-e",
        ] {
            let member = format!("{key}=v");
            assert_eq!(
                parse_tracestate(&[&member]).as_deref(),
                Some(member.as_str()),
                "{key}"
            );
        }
        let too_long = format!("{}=v", "k".repeat(257));
        for bad in ["@foo=v", "Foo=v", "fo o=v", too_long.as_str()] {
            assert_eq!(parse_tracestate(&[bad]), None, "{bad}");
        }
        assert_eq!(parse_tracestate(&["A=1"]), None, "upper-case key");
        assert_eq!(parse_tracestate(&["a=1,b"]), None);
        assert_eq!(
            parse_tracestate(&["a=1", "b=2"]).as_deref(),
            Some("a=1,b=2"),
            "lines are joined"
        );
        assert_eq!(
            parse_tracestate(&["a=1, ,b=2"]).as_deref(),
            Some("a=1,b=2"),
            "empty members skipped"
        );
        assert_eq!(
            parse_tracestate(&["tenant@vendor=x"]).as_deref(),
            Some("tenant@vendor=x")
        );
        // Over 512 bytes: long members are dropped first, then from the end.
        let long = format!("long={}", "x".repeat(200));
        let short: Vec<String> = (0..20)
            .map(|i| format!("s{i}={}", "y".repeat(20)))
            .collect();
        let mut all = vec![long.clone()];
        all.extend(short.iter().cloned());
        let out = parse_tracestate(&[&all.join(",")]).unwrap();
        assert!(out.len() <= 512, "{}", out.len());
        assert!(!out.contains("long="));
        assert!(out.starts_with("s0="));
    }

    #[test]
    fn sampling_by_ratio_and_parent() {
        let mut h = HeaderMap::new();
        let none = Sampler::ratio(0.0, true);
        let all = Sampler::ratio(1.0, true);
        assert!(!TraceContext::from_headers(&h, &none).sampled());
        assert!(TraceContext::from_headers(&h, &all).sampled());
        // About half of new traces at 0.5.
        let half = Sampler::ratio(0.5, true);
        let n = (0..4000)
            .filter(|_| TraceContext::from_headers(&h, &half).sampled())
            .count();
        assert!((1700..2300).contains(&n), "{n}");
        // Decided by the trace id: the same id always gets the same answer.
        let low = "00-4bf92f3577b34da600000000000000ff-00f067aa0ba902b7-00";
        let high = "00-4bf92f3577b34da600ff0000000000ff-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, low.parse().unwrap());
        assert!(
            !TraceContext::from_headers(&h, &half).sampled(),
            "parent said no"
        );
        assert!(TraceContext::from_headers(&h, &Sampler::ratio(0.5, false)).sampled());
        h.insert(TRACEPARENT, high.parse().unwrap());
        assert!(
            TraceContext::from_headers(&h, &none).sampled(),
            "parent said yes"
        );
        assert!(!TraceContext::from_headers(&h, &Sampler::ratio(0.5, false)).sampled());
    }
}
