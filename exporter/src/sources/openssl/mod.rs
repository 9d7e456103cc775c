//! The OpenSSL capture point: plaintext at `SSL_read`/`SSL_write` (and their `_ex` forms),
//! one record per call, keyed by the library's connection object (`SSL*`), whose socket is
//! the one the call's syscalls used. The byte streams are [`Streams`]'.

pub mod attach;
pub mod record;

use super::stream::Streams;
use super::{CapturePoint, Context, Made, Source};
use crate::capture::records::DecodeError;
use crate::protocols::Conventions;
use crate::telemetry::counters::Stats;
use otel_config::Selection;
use std::sync::Arc;

pub struct Openssl(Streams);

impl Openssl {
    pub fn new(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Openssl {
        Openssl(Streams::new(
            CapturePoint::Openssl,
            true,
            selection,
            conv,
            stats,
        ))
    }
}

impl Source for Openssl {
    fn kinds(&self) -> &'static [u32] {
        record::KINDS
    }

    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), DecodeError> {
        self.0.record(kind, bytes, cx, made)
    }

    fn tick(&mut self, now_mono_ns: u64, made: &mut Vec<Made>) {
        self.0.tick(now_mono_ns, made);
    }

    fn process_exit(&mut self, tgid: u32, cx: &mut Context<'_>, made: &mut Vec<Made>) {
        self.0.process_exit(tgid, cx, made);
    }

    fn close_all(&mut self, made: &mut Vec<Made>) {
        self.0.close_all(made);
    }
}
