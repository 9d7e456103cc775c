//! Calls as OpenTelemetry: spans, RED histograms, and sightline's own counters.

pub mod counters;
pub mod metrics;
pub mod prometheus;
pub mod spans;
