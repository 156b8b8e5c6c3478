//! Telemetry: metrics, the access log, trace context propagation and OTLP span export.

pub mod access_log;
pub mod instance;
pub mod metrics;
pub mod otlp;
pub mod otlp_wire;
pub mod record;
pub mod trace_context;

use crate::config::{AccessLogConfig, Diag, Observability, OtlpConfig};
use crate::outbound::Endpoint;
use access_log::AccessLog;
use http::HeaderName;
use metrics::RouteMetrics;
use otlp::SpanExporter;
use record::Record;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use trace_context::Sampler;

/// What is recorded when a response body ends (or is abandoned): the request's metrics and,
/// when it is logged or its span exported, its record, now with `bytes_out` and the full
/// latency.
pub struct Completion {
    pub metrics: Option<Arc<RouteMetrics>>,
    pub method: http::Method,
    pub status: u16,
    pub started: Instant,
    pub bytes_in: u64,
    /// Counts a streamed request body of unknown length.
    pub bytes_in_counter: Option<Arc<AtomicU64>>,
    /// Not yet shared: completed here, then handed to the log and the exporter.
    pub record: Option<Arc<Record>>,
    pub log: Option<Arc<AccessLog>>,
    pub spans: Option<Arc<SpanExporter>>,
}

impl Completion {
    pub fn finish(self, bytes_out: u64) {
        let latency = self.started.elapsed();
        let bytes_in = self
            .bytes_in_counter
            .as_ref()
            .map_or(self.bytes_in, |c| c.load(Ordering::Relaxed));
        if let Some(m) = &self.metrics {
            m.record(&self.method, self.status, latency, bytes_in, bytes_out);
        }
        let Some(mut record) = self.record else {
            return;
        };
        if let Some(r) = Arc::get_mut(&mut record) {
            r.bytes_out = bytes_out;
            r.bytes_in = bytes_in;
            r.latency_us = latency.as_micros() as u64;
        }
        match (self.log, self.spans) {
            (Some(log), Some(spans)) => {
                spans.submit(Arc::clone(&record));
                log.submit(record);
            }
            (Some(log), None) => log.submit(record),
            (None, Some(spans)) => spans.submit(record),
            (None, None) => {}
        }
    }
}

/// The telemetry sinks a snapshot hands requests to; kept running across reloads while their
/// settings do not change.
#[derive(Default, Clone)]
pub struct Sinks {
    pub access_log: Option<Arc<AccessLog>>,
    pub spans: Option<Arc<SpanExporter>>,
}

impl Sinks {
    /// The exporter's and the access log's families for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use metrics::family;
        if let Some(spans) = &self.spans {
            let s = &spans.stats;
            family(
                out,
                "portcullis_otlp_spans_total",
                "counter",
                "Spans handed to the OTLP exporter, by result.",
                &metrics::by_result(&[
                    ("exported", &s.exported),
                    ("dropped_queue_full", &s.dropped_queue_full),
                    ("dropped_export_failed", &s.dropped_export_failed),
                ]),
            );
            family(
                out,
                "portcullis_otlp_export_requests_total",
                "counter",
                "OTLP export requests by result.",
                &metrics::by_result(&[("ok", &s.requests_ok), ("failed", &s.requests_failed)]),
            );
        }
        if let Some(log) = &self.access_log {
            family(
                out,
                "portcullis_access_log_lines_total",
                "counter",
                "Access log lines by result.",
                &metrics::by_result(&[
                    ("written", &log.written),
                    ("dropped", &log.dropped),
                    ("sampled_out", &log.sampled_out),
                ]),
            );
        }
    }
}

/// `observability`, checked.
pub struct ObserveSpec {
    /// Continue or start a trace and send `traceparent` / `tracestate` upstream.
    pub trace_context: bool,
    /// Response header carrying the trace id, if configured.
    pub trace_id_header: Option<HeaderName>,
    /// Response header carrying the instance id, and its value, if configured.
    pub instance_header: Option<(HeaderName, http::HeaderValue)>,
    /// Sets the sampled flag of new (and, unless parent-based, continued) traces.
    pub sampler: Sampler,
    /// Request metrics are recorded (gauges of live state are always available).
    pub metrics_enabled: bool,
    pub access_log: Option<AccessLogConfig>,
    /// The exporter's settings and its parsed collector URL.
    pub otlp: Option<(OtlpConfig, Endpoint)>,
}

impl ObserveSpec {
    pub fn build(o: &Observability, diag: &mut Diag) -> Option<ObserveSpec> {
        let mark = diag.mark();
        if let Some(a) = &o.access_log {
            if !(1..=1_000_000).contains(&a.queue_size) {
                diag.err(
                    0,
                    "observability.access_log.queue_size",
                    "must be between 1 and 1000000",
                );
            }
            if !(0.0..=1.0).contains(&a.sample_2xx) {
                diag.err(
                    0,
                    "observability.access_log.sample_2xx",
                    "must be between 0.0 and 1.0",
                );
            }
            if a.destination.is_empty() {
                diag.err(
                    0,
                    "observability.access_log.destination",
                    "must be stdout, stderr or a file path",
                );
            }
        }
        let otlp = o
            .otlp
            .as_ref()
            .and_then(|c| build_otlp(c, o.trace_context.enabled, diag).map(|e| (c.clone(), e)));
        let trace_id_header = o.trace_context.response_header.as_ref().and_then(|h| {
            let name = HeaderName::from_bytes(h.as_bytes()).ok();
            if name.is_none() {
                diag.err(
                    0,
                    "observability.trace_context.response_header",
                    format!("`{h}` is not a valid header name"),
                );
            }
            name
        });
        let instance_header = o.instance_header.as_ref().and_then(|h| {
            let named = HeaderName::from_bytes(h.as_bytes())
                .ok()
                .zip(http::HeaderValue::from_str(instance::id()).ok());
            if named.is_none() {
                diag.err(
                    h.line,
                    "observability.instance_header",
                    format!("`{}` is not a valid header name", h.value),
                );
            }
            named
        });
        diag.ok_since(
            mark,
            ObserveSpec {
                trace_context: o.trace_context.enabled,
                trace_id_header,
                instance_header,
                sampler: o.otlp.as_ref().map_or(Sampler::ALWAYS, |c| {
                    Sampler::ratio(c.sample_ratio, c.parent_based)
                }),
                metrics_enabled: o.metrics.enabled,
                access_log: o.access_log.clone(),
                otlp,
            },
        )
    }
}

/// `observability.otlp`: the collector's endpoint when every setting is valid.
fn build_otlp(o: &OtlpConfig, trace_context: bool, diag: &mut Diag) -> Option<Endpoint> {
    let mark = diag.mark();
    let endpoint = match otlp::endpoint(&o.endpoint) {
        Ok(e) => Some(e),
        Err(e) => {
            diag.err(0, "observability.otlp.endpoint", e);
            None
        }
    };
    if !trace_context {
        diag.err(
            0,
            "observability.otlp",
            "span export needs observability.trace_context.enabled: true",
        );
    }
    if !(0.0..=1.0).contains(&o.sample_ratio) {
        diag.err(
            0,
            "observability.otlp.sample_ratio",
            "must be between 0.0 and 1.0",
        );
    }
    for (value, range, key) in [
        (o.batch_size as u64, 1..=10_000, "batch_size"),
        (o.queue_size as u64, 1..=1_000_000, "queue_size"),
        (o.export_interval_ms, 10..=60_000, "export_interval_ms"),
        (o.timeout_ms, 10..=60_000, "timeout_ms"),
    ] {
        if !range.contains(&value) {
            diag.err(
                0,
                format!("observability.otlp.{key}"),
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
    }
    for (k, v) in &o.headers {
        if HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(v).is_err()
        {
            diag.err(
                0,
                "observability.otlp.headers",
                format!("`{k}` is not a valid header"),
            );
        }
    }
    diag.ok_since(mark, endpoint?)
}

#[cfg(test)]
mod tests {
    const BASE: &str = "listeners: [{ name: public, address: \"127.0.0.1:8080\" }]\nadmin: { address: \"127.0.0.1:9901\" }\ndefaults: { auth: none }\nroutes:\n  - name: hello\n    match: { path: { prefix: / } }\n    direct_response: { status: 200 }\n";

    fn errors(extra: &str) -> Vec<(u32, String, String)> {
        crate::compile::errors_of(&format!("{BASE}{extra}"))
    }

    #[test]
    fn otlp_settings_are_checked_and_located() {
        assert_eq!(
            errors("observability:\n  otlp:\n    endpoint: http://127.0.0.1:4318\n"),
            vec![]
        );
        let e = errors(
            "observability:\n  otlp:\n    endpoint: https://collector:4318\n    sample_ratio: 2\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (e[0].0, e[0].1.as_str()),
            (10, "observability.otlp.endpoint")
        );
        assert!(e[0].2.contains("https"), "{e:?}");
        assert_eq!(
            (e[1].0, e[1].1.as_str()),
            (11, "observability.otlp.sample_ratio")
        );
        let e = errors("observability:\n  trace_context: { enabled: false }\n  otlp: { endpoint: \"http://c:4318\", batch_size: 0 }\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter().all(|e| e.0 == 10),
            "flow mappings point at their line: {e:?}"
        );
        assert!(e.iter().any(|e| e.2.contains("trace_context.enabled")));
    }

    #[test]
    fn access_log_and_trace_header_are_checked() {
        let e = errors("observability:\n  trace_context:\n    response_header: \"bad header\"\n  access_log:\n    queue_size: 0\n    sample_2xx: 2\n");
        let got: Vec<(u32, &str)> = e.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (10, "observability.trace_context.response_header"),
                (12, "observability.access_log.queue_size"),
                (13, "observability.access_log.sample_2xx"),
            ]
        );
    }
}
