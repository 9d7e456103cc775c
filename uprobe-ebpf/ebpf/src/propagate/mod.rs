//! Trace context propagation: a Go client call's `traceparent`, decided by the client probes
//! (`go::client`), is written into its outgoing request by one of two paths.
//! - `socket`: into plaintext HTTP/1.x requests as the kernel sends them (`sk_msg`), without
//!   writing into any process, so it works under kernel lockdown.
//! - `memory`: into the request in the process's own memory (`bpf_probe_write_user`), for
//!   HTTPS and HTTP/2, which the socket path cannot reach.
//!
//! `traceparent` is the value itself, which both paths and the Go probes share.

mod memory;
mod socket;
pub(crate) mod traceparent;
