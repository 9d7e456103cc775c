//! Parsing a complete HTTP/1.x head with httparse, keeping only what telemetry needs.
//!
//! Only the headers named here are kept. Everything else, Authorization and Cookie included,
//! is dropped at parse time, so no later stage can leak it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    /// Requests only.
    pub method: String,
    /// The raw request target (origin-form path and query, or absolute-form).
    pub target: String,
    /// Responses only.
    pub status: Option<u16>,
    /// The minor version: 0 or 1.
    pub minor: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x at all (for example HTTP/2's preface, or another protocol).
    NotHttp,
    /// Looked like HTTP but broke its grammar.
    Malformed,
}

const MAX_HEADERS: usize = 96;

/// Parses a head. `Ok(None)` means incomplete; on success returns the bytes used.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    if buf.starts_with(b"PRI * HTTP/2") {
        return Err(HeadError::NotHttp);
    }
    // Uninitialised: zeroing 96 headers per parse was a visible share of the agent's CPU.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    if buf.starts_with(b"HTTP/") {
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => {
                let mut head = blank(Kind::Response);
                head.status = resp.code;
                head.minor = resp.version.unwrap_or(1);
                fill(&mut head, resp.headers)?;
                Ok(Some((head, n)))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(HeadError::Malformed),
        }
    } else {
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => {
                let mut head = blank(Kind::Request);
                head.method = req.method.unwrap_or_default().to_string();
                head.target = req.path.unwrap_or_default().to_string();
                head.minor = req.version.unwrap_or(1);
                fill(&mut head, req.headers)?;
                Ok(Some((head, n)))
            }
            Ok(httparse::Status::Partial) => {
                // A partial buffer that cannot become a request line is not HTTP: fail early
                // rather than buffering a binary protocol up to the head limit.
                if !plausible_request_prefix(buf) {
                    return Err(HeadError::NotHttp);
                }
                Ok(None)
            }
            Err(httparse::Error::Token) | Err(httparse::Error::Version) => Err(HeadError::NotHttp),
            Err(_) => Err(HeadError::Malformed),
        }
    }
}

fn blank(kind: Kind) -> Head {
    Head {
        kind,
        method: String::new(),
        target: String::new(),
        status: None,
        minor: 1,
        host: None,
        user_agent: None,
        traceparent: None,
        tracestate: None,
        content_length: None,
        chunked: false,
    }
}

fn fill(head: &mut Head, headers: &[httparse::Header]) -> Result<(), HeadError> {
    for h in headers {
        let value = || text(h.value);
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            head.host = Some(value());
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(value());
        } else if name.eq_ignore_ascii_case("traceparent") {
            head.traceparent = Some(value());
        } else if name.eq_ignore_ascii_case("tracestate") {
            head.tracestate = Some(value());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(HeadError::Malformed)?;
            // Conflicting lengths are a smuggling signal and unframeable: refuse.
            if head.content_length.is_some_and(|c| c != n) {
                return Err(HeadError::Malformed);
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            head.chunked = true;
        }
    }
    // RFC 9112 §6.3: chunked wins over Content-Length.
    if head.chunked {
        head.content_length = None;
    }
    Ok(())
}

/// A header value as text, trimmed. Values are almost always ASCII: the strict check is the
/// fast path, and only invalid UTF-8 pays for replacement characters.
fn text(value: &[u8]) -> String {
    let v = value.trim_ascii();
    match std::str::from_utf8(v) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v).trim().to_string(),
    }
}

fn plausible_request_prefix(buf: &[u8]) -> bool {
    // A method token is upper-case letters, then a space; 20 bytes is past any real method.
    let limit = buf.len().min(20);
    for (i, &b) in buf[..limit].iter().enumerate() {
        if b == b' ' {
            return i > 0;
        }
        if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_useful_headers() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x:8443\r\nAuthorization: Bearer s3cret\r\nCookie: k=v\r\nUser-Agent: curl/7.88\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        let (h, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/a?b=c");
        assert_eq!(h.host.as_deref(), Some("x:8443"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/7.88"));
        assert!(h.traceparent.is_some());
        assert!(!format!("{h:?}").contains("s3cret"));
    }

    #[test]
    fn rejects_non_http_early() {
        assert_eq!(parse_head(b"\x16\x03\x01\x02"), Err(HeadError::NotHttp));
        assert_eq!(
            parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::NotHttp)
        );
        assert_eq!(parse_head(b"GET /partial"), Ok(None));
    }

    #[test]
    fn conflicting_lengths_are_malformed() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(parse_head(raw), Err(HeadError::Malformed));
    }
}
