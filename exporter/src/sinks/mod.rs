//! Where finished calls go: the terminal, JSON lines, the RED summary and OTLP.

pub mod live;
pub mod otlp;
pub mod summary;
pub mod timefmt;

use crate::protocols::call::Call;

/// A consumer of finished calls, run on the pipeline's thread: it must not block.
pub trait Sink: Send {
    fn on_call(&mut self, call: &Call);
    fn on_process_exit(&mut self, _pid: u32) {}
    /// End of a batch of records: a chance to flush buffered output once, not per call.
    fn flush(&mut self) {}
}
