//! Telemetry: trace context propagation and the access log (metrics and export come later).

pub mod access_log;
pub mod trace_context;
