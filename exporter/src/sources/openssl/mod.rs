//! The OpenSSL capture point: plaintext at `SSL_read`/`SSL_write` (and their `_ex` forms),
//! one record per call, keyed by the library's connection object (`SSL*`), whose socket is
//! the one the call's syscalls used. The byte streams are [`Streams`]'.

pub mod attach;
pub mod record;

use super::stream::Streams;
use super::CapturePoint;
use crate::protocols::Conventions;
use crate::telemetry::counters::Stats;
use otel_config::Selection;
use std::sync::Arc;

/// The capture point's source: TLS plaintext, as byte streams.
pub fn source(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Streams {
    Streams::new(
        (CapturePoint::Openssl, record::KINDS),
        true,
        selection,
        conv,
        stats,
    )
}
