//! Telemetry: trace context propagation (metrics, access log and export come later).

pub mod trace_context;
