//! Where finished calls go: the terminal, JSON lines, the RED summary and OTLP.

pub mod flows;
pub mod live;
pub mod otlp;
pub mod prometheus;
pub mod summary;
pub mod timefmt;

use crate::protocols::call::Call;
use crate::sources::tcp::NetEvent;
use std::borrow::Cow;

/// `s` safe to print on a terminal: control characters (escape sequences from a path Go
/// decoded, a service name from any process's environment) are shown escaped, never sent.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A consumer of finished calls, run on the pipeline's thread: it must not block.
pub trait Sink: Send {
    fn on_call(&mut self, call: &Call);
    /// A TCP connection event; most sinks show calls only.
    fn on_net(&mut self, _event: &NetEvent) {}
    fn on_process_exit(&mut self, _pid: u32) {}
    /// End of a batch of records: a chance to flush buffered output once, not per call.
    fn flush(&mut self) {}
}
