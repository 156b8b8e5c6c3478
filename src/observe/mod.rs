//! Telemetry: metrics, the access log, trace context propagation and OTLP span export.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod otlp_wire;
pub mod record;
pub mod trace_context;

use access_log::AccessLog;
use metrics::RouteMetrics;
use otlp::SpanExporter;
use record::Record;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
