//! The live view: one line per call, for people (text) or programs (JSON lines).

use super::timefmt::{clock, rfc3339};
use super::Sink;
use crate::protocols::call::Call;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct LiveView<W: Write + Send> {
    out: std::io::BufWriter<W>,
    format: Format,
    /// The text view's column titles are out.
    titled: bool,
}

impl<W: Write + Send> LiveView<W> {
    pub fn new(out: W, format: Format) -> Self {
        LiveView {
            out: std::io::BufWriter::with_capacity(64 << 10, out),
            format,
            titled: format != Format::Text,
        }
    }

    /// The column titles of the text view, once, at the first batch: after capture started,
    /// before any line.
    fn title(&mut self) {
        if !self.titled {
            self.titled = true;
            let _ = writeln!(
                self.out,
                "{:<12} {:<22} {:<6} {:<7} {:<40} {:>3} {:>10} PEER",
                "TIME", "PROCESS", "ROLE", "METHOD", "PATH", "ST", "DURATION"
            );
        }
    }
}

pub fn text_line(c: &Call) -> String {
    let mut target = c.path.clone();
    if let Some(q) = &c.query {
        target.push('?');
        target.push_str(q);
    }
    let who = format!("{}[{}]", c.process.service_name, c.process.pid);
    let peer = c.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let method = c.method_original.as_deref().unwrap_or(&c.method);
    format!(
        "{} {:<22} {:<6} {:<7} {:<40} {:>3} {:>10} {}",
        clock(c.start_unix_ns),
        who,
        c.role.as_str(),
        method,
        target,
        c.status,
        format_duration(c.duration_ns),
        peer
    )
}

pub fn json_line(c: &Call) -> String {
    let v = serde_json::json!({
        "time": rfc3339(c.start_unix_ns),
        "service": c.process.service_name,
        "pid": c.process.pid,
        "executable": c.process.exe_path,
        "role": c.role.as_str(),
        "method": c.method_original.as_deref().unwrap_or(&c.method),
        "path": c.path,
        "query": c.query,
        "status": c.status,
        "duration_ms": c.duration_ns as f64 / 1e6,
        "peer": c.peer.map(|p| p.to_string()),
        "local": c.local.map(|p| p.to_string()),
        "host": c.host,
        "trace_id": format!("{:032x}", c.trace_id),
        "span_id": format!("{:016x}", c.span_id),
        "parent_span_id": c.parent_span_id.map(|p| format!("{p:016x}")),
    });
    v.to_string()
}

pub fn format_duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.0}µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

impl<W: Write + Send> Sink for LiveView<W> {
    fn on_call(&mut self, c: &Call) {
        self.title();
        let line = match self.format {
            Format::Text => text_line(c),
            Format::Json => json_line(c),
        };
        // A closed stdout (piped into `head`) must not stop the agent.
        let _ = writeln!(self.out, "{line}");
    }

    fn flush(&mut self) {
        self.title();
        let _ = self.out.flush();
    }
}
