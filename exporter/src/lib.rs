//! sightline: HTTP calls captured at the TLS library boundary, turned into OpenTelemetry.
//!
//! One module per stage, and data flows one way through them:
//! loader → events → pipeline (connections, protocols) → telemetry → sinks, with discovery
//! beside them telling the loader what to attach.
// `unsafe` is confined to the loader, which talks to the kernel.
#![deny(unsafe_code)]

pub mod app;
pub mod discovery;
pub mod events;
pub mod golang;
pub mod loader;
pub mod pipeline;
pub mod probe_cmd;
pub mod processes;
pub mod protocols;
pub mod sinks;
pub mod sockets;
pub mod symbols_cmd;
pub mod telemetry;
pub mod twins;
