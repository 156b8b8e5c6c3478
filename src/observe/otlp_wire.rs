//! OTLP trace export bodies (`ExportTraceServiceRequest`, protobuf) written straight from the
//! gateway's records with prost's wire primitives. Building the generated message tree first
//! cost about 35 allocations per span (a `String` per attribute key and value) and doubled the
//! exporter's CPU per request; here a span is a few appends into reused buffers. The field
//! numbers are those of opentelemetry-proto v1 (`trace.proto`, `common.proto`,
//! `resource.proto`); the tests decode the output with the official generated types.

use super::record::Record;
use prost::encoding::{encoded_len_varint, WireType};
use std::time::SystemTime;

/// One attribute value.
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// Appends a base-128 varint. prost's `encode_varint` is generic over `BufMut` and took a fifth
/// of the exporter's time; most values here are one byte.
#[inline]
fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

/// Appends a length-delimited field.
fn bytes_field(out: &mut Vec<u8>, tag: u32, data: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn fixed64_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

fn len_delimited(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

/// A `KeyValue` field (`tag`) holding `key` = `value`, lengths computed without a scratch
/// buffer.
pub fn key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: Value<'_>) {
    let any_len = match value {
        Value::Str(s) => len_delimited(s.len()),
        Value::Int(i) => 1 + encoded_len_varint(i as u64),
    };
    let kv_len = len_delimited(key.len()) + len_delimited(any_len);
    out.reserve(len_delimited(kv_len) + 1);
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(kv_len as u64, out);
    bytes_field(out, 1, key.as_bytes()); // KeyValue.key
    encode_key(2, WireType::LengthDelimited, out); // KeyValue.value
    encode_varint(any_len as u64, out);
    match value {
        Value::Str(s) => bytes_field(out, 1, s.as_bytes()), // AnyValue.string_value
        Value::Int(i) => varint_field(out, 3, i as u64),    // AnyValue.int_value
    }
}

/// Appends a nested message field written by `f` (via `scratch`, reused across calls).
fn message(out: &mut Vec<u8>, tag: u32, scratch: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    f(scratch);
    bytes_field(out, tag, scratch);
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Span flags: the W3C trace flags plus whether the parent is known to be remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
const SPAN_KIND_SERVER: u64 = 2;
const STATUS_ERROR: u64 = 2;

/// The gateway's server span for one request (a `Span` message body); false when the record
/// has no trace.
pub fn span(out: &mut Vec<u8>, scratch: &mut Vec<u8>, r: &Record) -> bool {
    let Some(trace) = r.trace.as_ref() else {
        return false;
    };
    let (path, query) = r.path_and_query();
    let method = r.method.as_str();
    let request_id = String::from_utf8_lossy(r.request_id.as_bytes());
    bytes_field(out, 1, &trace.trace_id);
    bytes_field(out, 2, &trace.span_id);
    if let Some(ts) = &trace.tracestate {
        bytes_field(out, 3, ts.as_bytes());
    }
    if let Some(p) = &trace.parent_id {
        bytes_field(out, 4, p);
    }
    // Name: `METHOD route`, or just the method when no route matched.
    encode_key(5, WireType::LengthDelimited, out);
    match &r.route {
        Some(route) => {
            encode_varint((method.len() + 1 + route.len()) as u64, out);
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(route.as_bytes());
        }
        None => {
            encode_varint(method.len() as u64, out);
            out.extend_from_slice(method.as_bytes());
        }
    }
    varint_field(out, 6, SPAN_KIND_SERVER);
    let start = unix_nanos(r.started_at);
    fixed64_field(out, 7, start);
    fixed64_field(out, 8, start + r.latency_us * 1000);

    let mut attr = |key: &str, value: Value<'_>| key_value(out, 9, key, value);
    attr("http.request.method", Value::Str(method));
    attr("url.path", Value::Str(path));
    if let Some(q) = &query {
        attr("url.query", Value::Str(q));
    }
    attr("http.response.status_code", Value::Int(i64::from(r.status)));
    attr("client.address", Value::Str(&r.client_ip));
    attr("portcullis.request_id", Value::Str(&request_id));
    attr(
        "portcullis.config_version",
        Value::Int(r.config_version as i64),
    );
    attr("http.request.body.size", Value::Int(r.bytes_in as i64));
    attr("http.response.body.size", Value::Int(r.bytes_out as i64));
    attr("portcullis.auth_result", Value::Str(r.auth_result));
    if let Some(p) = &r.principal {
        if let Some(sub) = &p.subject {
            attr("enduser.id", Value::Str(sub));
        }
        if let Some(t) = &p.tenant {
            attr("portcullis.tenant", Value::Str(t));
        }
    }
    attr(
        "portcullis.rate_limit_result",
        Value::Str(r.rate_limit.as_str()),
    );
    attr("portcullis.retries", Value::Int(i64::from(r.retries)));
    if let Some(route) = &r.route {
        attr("portcullis.route", Value::Str(route));
    }
    if let Some(u) = &r.upstream {
        attr("portcullis.upstream", Value::Str(u));
    }
    if let Some(t) = &r.target {
        attr("portcullis.target", Value::Str(t));
    }
    if let Some(us) = r.upstream_latency_us {
        attr("portcullis.upstream_latency_us", Value::Int(us as i64));
    }

    for e in &r.retry_events {
        message(out, 11, scratch, |ev| {
            fixed64_field(ev, 1, unix_nanos(r.wall_time(e.at)));
            bytes_field(ev, 2, b"retry");
            key_value(
                ev,
                3,
                "portcullis.retry.attempt",
                Value::Int(i64::from(e.attempt)),
            );
            key_value(ev, 3, "portcullis.retry.reason", Value::Str(&e.reason));
            key_value(
                ev,
                3,
                "portcullis.retry.failed_target",
                Value::Str(&e.target),
            );
        });
    }
    // Server spans: 5xx is an error, 4xx is the client's (OpenTelemetry HTTP conventions).
    if r.status >= 500 {
        message(out, 15, scratch, |st| {
            let msg = format!("HTTP {}", r.status);
            bytes_field(st, 2, msg.as_bytes());
            varint_field(st, 3, STATUS_ERROR);
        });
    }
    let flags = u32::from(trace.flags)
        | HAS_IS_REMOTE
        | if trace.parent_id.is_some() {
            IS_REMOTE
        } else {
            0
        };
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&flags.to_le_bytes());
    true
}

/// `Resource` and `InstrumentationScope` bodies, encoded once per exporter.
pub struct Preamble {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Preamble {
    pub fn new(attributes: &[(String, String)]) -> Preamble {
        let mut resource = Vec::new();
        for (k, v) in attributes {
            key_value(&mut resource, 1, k, Value::Str(v));
        }
        let mut scope = Vec::new();
        bytes_field(&mut scope, 1, b"portcullis");
        bytes_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
        Preamble { resource, scope }
    }
}

/// Reused buffers for encoding batches.
#[derive(Default)]
pub struct Encoder {
    spans: Vec<u8>,
    span: Vec<u8>,
    scratch: Vec<u8>,
    nested: Vec<u8>,
}

impl Encoder {
    /// One `ExportTraceServiceRequest` with every traced record of `batch`.
    pub fn encode<'r>(
        &mut self,
        preamble: &Preamble,
        batch: impl IntoIterator<Item = &'r Record>,
    ) -> Vec<u8> {
        self.spans.clear();
        for r in batch {
            self.span.clear();
            if span(&mut self.span, &mut self.scratch, r) {
                bytes_field(&mut self.spans, 2, &self.span); // ScopeSpans.spans
            }
        }
        // ScopeSpans { scope = 1, spans = 2 }
        self.nested.clear();
        bytes_field(&mut self.nested, 1, &preamble.scope);
        self.nested.extend_from_slice(&self.spans);
        // ResourceSpans { resource = 1, scope_spans = 2 }
        let mut resource_spans =
            Vec::with_capacity(self.nested.len() + preamble.resource.len() + 16);
        bytes_field(&mut resource_spans, 1, &preamble.resource);
        bytes_field(&mut resource_spans, 2, &self.nested);
        // ExportTraceServiceRequest { resource_spans = 1 }
        let mut out = Vec::with_capacity(resource_spans.len() + 8);
        bytes_field(&mut out, 1, &resource_spans);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::record::RetryEvent;
    use crate::observe::trace_context::{Sampler, TraceContext};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::time::{Duration, Instant};

    #[test]
    fn output_decodes_with_the_official_types() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let started = Instant::now();
        let started_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = Record {
            started,
            started_at,
            trace: Some(TraceContext::from_headers(&headers, &Sampler::ALWAYS)),
            method: http::Method::POST,
            uri: "/a/b?x=1".parse().unwrap(),
            include_query: true,
            route: Some("orders".into()),
            status: 503,
            latency_us: 1500,
            request_id: http::HeaderValue::from_static("r1"),
            retries: 1,
            retry_events: vec![RetryEvent {
                at: started + Duration::from_micros(700),
                attempt: 1,
                reason: "503".into(),
                target: "10.0.0.1:80".into(),
            }],
            ..Record::default()
        };
        let untraced = Record::default();
        let preamble = Preamble::new(&[("service.name".into(), "edge".into())]);
        let body = Encoder::default().encode(&preamble, [&r, &untraced, &r]);
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "portcullis");
        assert_eq!(ss.spans.len(), 2, "untraced records are skipped");
        let s = &ss.spans[0];
        assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(&s.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(s.name, "POST orders");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_500_000);
        assert_eq!(s.flags, 0x301);
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone()?.value)
        };
        assert_eq!(attr("url.path"), Some(Any::StringValue("/a/b".into())));
        assert_eq!(attr("url.query"), Some(Any::StringValue("x=1".into())));
        assert_eq!(attr("http.response.status_code"), Some(Any::IntValue(503)));
        assert_eq!(attr("portcullis.retries"), Some(Any::IntValue(1)));
        let st = s.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (2, "HTTP 503"));
        let e = &s.events[0];
        assert_eq!(e.name, "retry");
        assert_eq!(e.time_unix_nano, s.start_time_unix_nano + 700_000);
        assert_eq!(e.attributes.len(), 3);
        assert_eq!(ss.spans[1], ss.spans[0]);
    }
}
