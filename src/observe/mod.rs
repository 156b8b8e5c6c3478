//! Telemetry: metrics, the access log and trace context propagation (OTLP export comes later).

pub mod access_log;
pub mod metrics;
pub mod trace_context;

use access_log::{AccessLog, Record};
use metrics::RouteMetrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What is recorded when a response body ends (or is abandoned): the request's metrics and, if
/// it is logged, its access-log line, now with `bytes_out` and the full latency.
pub struct Completion {
    pub metrics: Option<Arc<RouteMetrics>>,
    pub method: http::Method,
    pub status: u16,
    pub started: Instant,
    pub bytes_in: u64,
    /// Counts a streamed request body of unknown length.
    pub bytes_in_counter: Option<Arc<AtomicU64>>,
    pub log: Option<(Box<Record>, Arc<AccessLog>)>,
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
        if let Some((mut record, log)) = self.log {
            record.bytes_out = bytes_out;
            record.bytes_in = bytes_in;
            record.latency_us = latency.as_micros() as u64;
            log.submit(record);
        }
    }
}
