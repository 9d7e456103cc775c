//! Finished exchanges as OpenTelemetry: calls, spans, metrics and sightline's own health.

pub mod call;
pub mod join;
pub mod metrics;
pub mod redact;
pub mod spans;
pub mod stats;
pub mod trace_context;
