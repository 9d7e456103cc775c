//! Support for sightline's end-to-end tests: a real OTLP receiver, real servers and clients.
#![forbid(unsafe_code)]

pub mod crafted;
pub mod flat;
pub mod gobuild;
pub mod gosvc;
pub mod netns;
pub mod podman;
pub mod procs;
pub mod receiver;
pub mod vm;
