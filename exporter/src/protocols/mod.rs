//! Protocol reconstruction: byte streams per connection in, protocol-neutral [`call::Call`]s
//! out. A connection's protocol is chosen by detection ([`Protocol`]); naming (methods),
//! redaction and the capture clock's conversion to wall-clock time live here, once, for every
//! source.

pub mod call;
pub mod http1;
pub mod redact;
pub mod trace_context;

pub use crate::capture::sockets::Role;

/// Why bytes were given up on. Each reason is a label on `sightline.parse.dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The connection does not carry HTTP/1.x (HTTP/2, or another protocol).
    NotHttp,
    /// HTTP that breaks the grammar.
    Malformed,
    /// Part of a head was not captured (capture size, or attached mid-message).
    TruncatedHead,
    /// Part of a chunked body's framing was not captured.
    TruncatedBody,
    /// A head larger than any server accepts.
    HeadTooLarge,
    /// A response arrived with no request outstanding (attached mid-exchange).
    ResponseWithoutRequest,
    /// A request where a response was expected, or the reverse.
    UnexpectedMessage,
    /// A request never answered before the connection ended or went quiet.
    NoResponse,
    /// Too many requests outstanding on one connection.
    QueueFull,
    /// The connection table was full and this connection was evicted.
    Evicted,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::NotHttp,
        DropReason::Malformed,
        DropReason::TruncatedHead,
        DropReason::TruncatedBody,
        DropReason::HeadTooLarge,
        DropReason::ResponseWithoutRequest,
        DropReason::UnexpectedMessage,
        DropReason::NoResponse,
        DropReason::QueueFull,
        DropReason::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotHttp => "not_http",
            DropReason::Malformed => "malformed",
            DropReason::TruncatedHead => "truncated_head",
            DropReason::TruncatedBody => "truncated_body",
            DropReason::HeadTooLarge => "head_too_large",
            DropReason::ResponseWithoutRequest => "response_without_request",
            DropReason::UnexpectedMessage => "unexpected_message",
            DropReason::NoResponse => "no_response",
            DropReason::QueueFull => "queue_full",
            DropReason::Evicted => "evicted",
        }
    }

    pub fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Request methods semantic conventions name; any other is reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `http.request.method` and, for a method semconv does not know, the method as sent
/// (`http.request.method_original`): unknown methods are bounded to one value.
pub fn method(sent: &str) -> (String, Option<String>) {
    method_owned(sent.to_string())
}

/// [`method`] for a method already owned, which becomes the call's without a copy.
pub fn method_owned(sent: String) -> (String, Option<String>) {
    if KNOWN_METHODS.contains(&sent.as_str()) {
        (sent, None)
    } else {
        ("_OTHER".to_string(), Some(sent))
    }
}

/// What every source needs to turn what it captured into a [`call::Call`]: whether query
/// values are redacted, and how the capture clock maps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Conventions {
    pub redact_query_values: bool,
    /// Wall-clock minus `CLOCK_MONOTONIC` (the clock the probes read), in ns.
    pub mono_to_unix_ns: i128,
}

impl Conventions {
    /// A capture time as ns since the Unix epoch.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.mono_to_unix_ns).max(0) as u64
    }

    /// A query string as it may leave the host.
    pub fn query(&self, q: &str) -> String {
        if self.redact_query_values {
            redact::redact_query(q)
        } else {
            q.to_string()
        }
    }
}

/// How one connection's bytes are parsed, chosen from its first bytes by [`Protocol::detect`].
#[derive(Debug)]
pub enum Protocol {
    Http1(http1::Http1Conn),
}

impl Protocol {
    /// The protocol of a connection whose first captured bytes are `first`; `role` is the
    /// process's end when the socket told it. HTTP/1.x is the one parsed; it also counts
    /// bytes that are not HTTP (`DropReason::NotHttp`), so every connection goes to it until
    /// another protocol is detected here.
    pub fn detect(_first: &[u8], role: Option<Role>) -> Protocol {
        let mut h = http1::Http1Conn::default();
        if let Some(r) = role {
            h.set_role(r);
        }
        Protocol::Http1(h)
    }

    /// Feeds one capture record: `len` bytes moved, `data` the part captured. `egress` is true
    /// for bytes the process sent.
    pub fn feed(
        &mut self,
        egress: bool,
        data: &[u8],
        len: usize,
        first_ns: u64,
        last_ns: u64,
        out: &mut http1::Output,
    ) {
        match self {
            Protocol::Http1(h) => h.feed(egress, data, len, first_ns, last_ns, out),
        }
    }

    /// The connection ended: complete what can be, count what cannot.
    pub fn close(&mut self, out: &mut http1::Output) {
        match self {
            Protocol::Http1(h) => h.close(out),
        }
    }

    /// The process's end as the socket told it, learnt after the first bytes: content does
    /// not override it.
    pub fn set_role(&mut self, role: Role) {
        match self {
            Protocol::Http1(h) => h.set_role(role),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Protocol::Http1(h) => h.role(),
        }
    }

    /// Requests seen so far on the connection, answered or not.
    pub fn requests_seen(&self) -> u64 {
        match self {
            Protocol::Http1(h) => h.requests_seen(),
        }
    }

    /// Responses started so far on the connection.
    pub fn responses_seen(&self) -> u64 {
        match self {
            Protocol::Http1(h) => h.responses_seen(),
        }
    }

    /// The newest request's `traceparent`, while it waits for its response.
    pub fn newest_traceparent(&self) -> Option<&str> {
        match self {
            Protocol::Http1(h) => h.newest_traceparent(),
        }
    }
}
