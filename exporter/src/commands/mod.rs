//! Subcommands beside `run`: what a binary offers (`symbols`) and the Go probes alone
//! (`probe-go`, for benchmarks and tests).

pub mod probe_go;
pub mod symbols;
