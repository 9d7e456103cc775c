//! sightline: HTTP calls captured by eBPF, turned into OpenTelemetry.
//!
//! One folder per stage, and data flows one way through them:
//! `capture` (load, attach, decode, sockets) → `sources` (one per capture point) →
//! `protocols` (bytes to calls) → `correlate` (trace ids across calls) → `telemetry` (spans,
//! metrics, own counters) → `sinks`. `pipeline` walks one record through them; `app` wires
//! them. Beside them, `discovery` tells the loader what to attach and `metadata` says who each
//! process is.
// `unsafe` is confined to the loader, which talks to the kernel.
#![deny(unsafe_code)]

pub mod app;
pub mod capture;
pub mod commands;
pub mod correlate;
pub mod discovery;
pub mod metadata;
pub mod pipeline;
pub mod protocols;
pub mod sinks;
pub mod sources;
pub mod telemetry;
