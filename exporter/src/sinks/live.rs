//! The live view: one line per call, for people (text) or programs (JSON lines).

use super::timefmt::{clock, rfc3339};
use super::{printable, Sink};
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
    let who = format!("{}[{}]", printable(&c.process.service_name), c.process.pid);
    let peer = c.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let method = c.method_original.as_deref().unwrap_or(&c.method);
    format!(
        "{} {:<22} {:<6} {:<7} {:<40} {:>3} {:>10} {}",
        clock(c.start_unix_ns),
        who,
        c.role.as_str(),
        printable(method),
        printable(&target),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::ProcessInfo;
    use crate::protocols::Role;
    use std::sync::Arc;

    fn call(service: &str, path: &str) -> Call {
        let env = format!("OTEL_SERVICE_NAME={service}\0");
        Call {
            process: Arc::new(ProcessInfo::from_parts(
                7,
                "/bin/x".into(),
                "x".into(),
                env.as_bytes(),
            )),
            role: Role::Server,
            method: "GET".into(),
            method_original: None,
            path: path.into(),
            query: None,
            absolute_authority: None,
            status: 200,
            route: None,
            protocol_version: "1.1",
            scheme: "http",
            host: None,
            host_port: None,
            peer: None,
            local: None,
            user_agent: Some("\u{1b}]0;pwned\u{7}".into()),
            start_unix_ns: 0,
            duration_ns: 1_000,
            trace_id: 1,
            span_id: 1,
            parent_span_id: None,
            trace_flags: 1,
            tracestate: None,
            network: None,
        }
    }

    #[test]
    fn escape_sequences_reach_no_terminal() {
        let line = text_line(&call("svc\u{1b}[2J", "/a\u{1b}[31mred\r"));
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("svc\\u{1b}[2J[7]"), "{line}");
        assert!(line.contains("/a\\u{1b}[31mred\\r"), "{line}");
        let json = json_line(&call("svc", "/a\u{1b}"));
        assert!(!json.chars().any(char::is_control), "{json:?}");
    }

    #[test]
    fn the_text_view_titles_its_columns_once() {
        let mut v = LiveView::new(Vec::new(), Format::Text);
        v.flush();
        v.on_call(&call("svc", "/a"));
        v.flush();
        let out = String::from_utf8(v.out.into_inner().unwrap()).unwrap();
        assert_eq!(out.matches("TIME").count(), 1, "{out}");
        assert!(out.starts_with("TIME"), "{out}");
        let mut j = LiveView::new(Vec::new(), Format::Json);
        j.flush();
        assert!(j.out.into_inner().unwrap().is_empty());
    }
}
