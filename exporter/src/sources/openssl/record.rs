//! The OpenSSL probes' records: a TLS call's plaintext ([`kind::DATA`]) and a freed
//! connection object ([`kind::CLOSE`]), in the byte-stream layout.

pub use crate::sources::stream::record::encode_data;
use sightline_common::kind;

/// The record kinds this capture point writes.
pub const KINDS: &[u32] = &[kind::DATA, kind::CLOSE];
