//! sightline's eBPF programs, one module per concern:
//! - `maps`: every map and loader-set global, and the helpers that touch only maps.
//! - `emit`: payload records (header and bytes) into the ring buffer.
//! - `openssl`: uprobes on OpenSSL's `SSL_read`/`SSL_write` (and `_ex`), `SSL_free`; the
//!   plaintext into the ring buffer.
//! - `sockets`: syscall and TCP tracepoints: each socket's peer, role and local address.
//! - `syscalls`: the read/write-family syscalls: which fd a TLS call used, and the bytes of
//!   sockets whose first bytes were HTTP, from any runtime.
//! - `process`: exec and exit, for discovery.
//! - `tcp`: network signals: each TCP connection's life, retransmits, resets and figures.
//! - `go`: Go net/http probes; `go/mod.rs` holds what they share, `go::server`, `go::client`
//!   and `go::goroutine` the programs.
//! - `propagate`: a Go client's `traceparent` into its outgoing request, at the socket
//!   (`propagate::socket`) or in the process's memory (`propagate::memory`);
//!   `propagate::traceparent` parses and formats the value and chooses ids.
//!
//! Dependencies go one way, each module using only those before it:
//! `maps` ← `emit` ← `propagate::traceparent` ← `go` (mod.rs) ← the program modules
//! (`openssl`, `sockets`, `syscalls`, `process`, `tcp`, `go::{server, client, goroutine}`,
//! `propagate::{socket, memory}`).
//! No program module imports another; what two of them share lives in a lower module.
#![no_std]
#![no_main]

mod emit;
mod go;
mod maps;
mod openssl;
mod process;
mod propagate;
mod sockets;
mod syscalls;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this is never
    // reached in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
