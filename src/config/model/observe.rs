//! `observability`: trace context, metrics, the access log and OTLP export.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Telemetry. Sections not built yet are refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    #[serde(default)]
    pub trace_context: TraceContextConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
    /// When set, every response carries this gateway's instance id in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_header: Option<Located<Text>>,
}

/// OpenTelemetry span export over OTLP/HTTP (protobuf), batched by a background thread.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL (`http://host:port/v1/traces`; a bare `http://host:port` gets `/v1/traces`).
    pub endpoint: Text,
    /// Fraction of new traces exported. A continued trace follows the caller's sampled flag
    /// unless `parent_based` is false.
    #[serde(default = "default_sample")]
    pub sample_ratio: f64,
    #[serde(default = "default_true")]
    pub parent_based: bool,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: Text,
    /// More resource attributes (e.g. `deployment.environment`).
    #[serde(default)]
    pub resource: BTreeMap<String, Text>,
    /// Headers sent with every export (e.g. a collector's authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
    /// Spans per export request.
    #[serde(default = "default_otlp_batch")]
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    #[serde(default = "default_otlp_interval")]
    pub export_interval_ms: u64,
    /// Spans waiting for the exporter; beyond this, spans are dropped and counted.
    #[serde(default = "default_otlp_queue")]
    pub queue_size: usize,
    /// Limit for one export request (connect + send + answer).
    #[serde(default = "default_otlp_timeout")]
    pub timeout_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_service_name() -> Text {
    Text::from("portcullis")
}

fn default_otlp_batch() -> usize {
    512
}

fn default_otlp_interval() -> u64 {
    1000
}

fn default_otlp_queue() -> usize {
    8192
}

fn default_otlp_timeout() -> u64 {
    5000
}

/// W3C Trace Context propagation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    /// Continue or start a trace and send `traceparent` / `tracestate` upstream.
    pub enabled: bool,
    /// When set, every response carries the trace id in this header.
    pub response_header: Option<Text>,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        TraceContextConfig {
            enabled: true,
            response_header: None,
        }
    }
}

/// One JSON line per request, written off the request path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr` or a file path (reopened on SIGUSR1).
    #[serde(default = "default_log_destination")]
    pub destination: Text,
    /// Lines waiting for the writer; beyond this, lines are dropped and counted.
    #[serde(default = "default_log_queue")]
    pub queue_size: usize,
    /// Fraction of 2xx lines kept (errors are always logged).
    #[serde(default = "default_sample")]
    pub sample_2xx: f64,
    /// Log query strings (secret parameters are always masked).
    #[serde(default)]
    pub include_query: bool,
}

fn default_log_destination() -> Text {
    Text::from("stdout")
}

fn default_log_queue() -> usize {
    8192
}

fn default_sample() -> f64 {
    1.0
}

/// Prometheus metrics at `GET /metrics` on the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record request metrics (gauges of live state are always available).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}
