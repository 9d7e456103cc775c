//! sightline: HTTP calls captured at the TLS library boundary, turned into OpenTelemetry.
//!
//! One module per stage, and data flows one way through them:
//! loader → events → connections → protocols → telemetry → sinks, with discovery beside them.
// `unsafe` is confined to the loader, which talks to the kernel.
#![deny(unsafe_code)]

pub mod protocols;
