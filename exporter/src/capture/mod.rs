//! Capture: the eBPF programs loaded and attached, their ring buffer decoded into records, and
//! the sockets records name resolved to their ends. The first stage; everything it hands on is
//! a decoded [`records::Record`] or a socket's [`sockets::Resolved`] ends.

pub mod btf;
pub mod existing;
pub mod kernel;
pub mod loader;
pub mod proc_net;
pub mod records;
pub mod sockets;
pub mod tables;
