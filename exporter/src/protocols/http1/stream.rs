//! One direction of an HTTP/1.x connection: bytes (with gaps where the capture was truncated)
//! in, message heads and message ends out.
//!
//! A gap inside a body is harmless: the body's length is known, and the bytes are skipped
//! anyway. A gap inside a head, or inside chunk framing, loses the message boundaries; the
//! stream then waits for a record that starts with a message, because HTTP libraries write a
//! head at the start of a write call, and TLS reads return whole records.

use super::head::{parse_head, Head, HeadError, Kind};
use crate::protocols::DropReason;

/// Largest head we buffer. Real heads are a few hundred bytes; servers reject heads past 8–16K.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub enum StreamEvent {
    /// A complete head. `at_ns` is when its first byte was seen.
    Head {
        head: Head,
        at_ns: u64,
    },
    /// The message whose head came last is complete; `at_ns` is when its last byte was seen.
    End {
        at_ns: u64,
    },
    Drop(DropReason),
}

#[derive(Debug)]
enum Body {
    Fixed(u64),
    Chunked(Chunk),
    /// Until the connection closes (a response without length).
    UntilClose,
}

#[derive(Debug)]
enum Chunk {
    /// Accumulating a chunk-size line.
    Size,
    Data(u64),
    /// The CRLF after a chunk's data; counts down the two bytes.
    DataEnd(u8),
    /// Trailer lines after the last chunk, until an empty line.
    Trailers,
}

#[derive(Debug)]
enum State {
    /// Between messages; the next byte starts a head.
    Idle,
    Head {
        start_ns: u64,
    },
    Body(Body),
    /// Message boundaries lost; wait for a record that starts with a head.
    Lost,
    /// The connection switched protocols (101, CONNECT): nothing more to parse.
    Opaque,
}

/// Framing decisions that depend on the other direction: a response to `HEAD` has no body
/// whatever its headers say. The pairing layer tells the response stream.
pub trait BodyHint {
    fn response_has_no_body(&mut self) -> bool;
}

#[derive(Debug)]
pub struct Stream {
    state: State,
    buf: Vec<u8>,
    /// Small line buffer for chunk sizes and trailers.
    line: Vec<u8>,
    last_ns: u64,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            state: State::Idle,
            buf: Vec::new(),
            line: Vec::new(),
            last_ns: 0,
        }
    }
}

impl Stream {
    pub fn is_opaque(&self) -> bool {
        matches!(self.state, State::Opaque)
    }

    /// True while a message without a length is open; only the connection's end ends it.
    pub fn awaiting_close(&self) -> bool {
        matches!(self.state, State::Body(Body::UntilClose))
    }

    /// Bytes held for an incomplete head or line.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.line.len()
    }

    /// The connection ended or went quiet: a length-less body ends here.
    pub fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let State::Body(Body::UntilClose) = self.state {
            out.push(StreamEvent::End {
                at_ns: self.last_ns,
            });
        }
        self.state = State::Idle;
        self.buf = Vec::new();
    }

    /// Feeds one record: `data` captured bytes of a transfer `len` bytes long.
    /// `first_ns` is when its bytes became visible, `last_ns` when the call returned.
    pub fn feed(
        &mut self,
        data: &[u8],
        len: usize,
        first_ns: u64,
        last_ns: u64,
        hint: &mut dyn BodyHint,
        out: &mut Vec<StreamEvent>,
    ) {
        self.last_ns = last_ns;
        if let State::Opaque = self.state {
            return;
        }
        if let State::Lost = self.state {
            if starts_like_head(data) {
                self.state = State::Idle;
            } else {
                self.line.clear();
                return;
            }
        }
        let mut rest = data;
        while !rest.is_empty() {
            rest = match self.step(rest, first_ns, last_ns, hint, out) {
                Some(r) => r,
                None => break,
            };
        }
        let gap = len.saturating_sub(data.len()) as u64;
        if gap > 0 {
            self.skip(gap, last_ns, out);
        }
    }

    /// The capture missed `n` bytes.
    fn skip(&mut self, n: u64, at_ns: u64, out: &mut Vec<StreamEvent>) {
        match &mut self.state {
            State::Body(Body::Fixed(left)) => {
                if n >= *left {
                    let overrun = n > *left;
                    self.state = State::Idle;
                    out.push(StreamEvent::End { at_ns });
                    if overrun {
                        // Bytes past the body belong to a head we did not see.
                        self.lose(out, DropReason::TruncatedHead);
                    }
                } else {
                    *left -= n;
                }
            }
            State::Body(Body::Chunked(Chunk::Data(left))) if n <= *left => {
                *left -= n;
                if *left == 0 {
                    self.state = State::Body(Body::Chunked(Chunk::DataEnd(2)));
                }
            }
            State::Body(Body::UntilClose) | State::Opaque | State::Lost => {}
            State::Idle => self.lose(out, DropReason::TruncatedHead),
            State::Head { .. } => self.lose(out, DropReason::TruncatedHead),
            State::Body(Body::Chunked(_)) => {
                // The chunk framing is gone; the message ends where we last saw it.
                out.push(StreamEvent::End { at_ns });
                self.lose(out, DropReason::TruncatedBody);
            }
        }
    }

    fn lose(&mut self, out: &mut Vec<StreamEvent>, reason: DropReason) {
        out.push(StreamEvent::Drop(reason));
        self.state = State::Lost;
        self.buf.clear();
        self.line.clear();
    }

    /// Consumes a prefix of `data`; `None` stops this record.
    fn step<'a>(
        &mut self,
        data: &'a [u8],
        first_ns: u64,
        last_ns: u64,
        hint: &mut dyn BodyHint,
        out: &mut Vec<StreamEvent>,
    ) -> Option<&'a [u8]> {
        match &mut self.state {
            State::Idle => {
                self.state = State::Head { start_ns: first_ns };
                Some(data)
            }
            State::Head { start_ns } => {
                let start_ns = *start_ns;
                // The common case: the whole head arrives in one record. Parse it in place;
                // copying it into the buffer first was a tenth of the agent's CPU.
                // `consumed` maps the parser's end of head back into this record: httparse,
                // not our terminator search, decides where the head ends.
                let fast = if self.buf.is_empty() {
                    head_end(&[], data).map(|end| parse_head(&data[..end]))
                } else {
                    None
                };
                let (parsed, consumed) = match fast {
                    Some(Ok(Some((head, used)))) => (Ok(Some(head)), used),
                    Some(Err(e)) => (Err(e), 0),
                    _ => {
                        let before = self.buf.len();
                        let take = head_end(&self.buf, data).unwrap_or(data.len());
                        if before + take > MAX_HEAD {
                            self.lose(out, DropReason::HeadTooLarge);
                            return None;
                        }
                        self.buf.extend_from_slice(&data[..take]);
                        match parse_head(&self.buf) {
                            Ok(Some((head, used))) => {
                                self.buf.clear();
                                (Ok(Some(head)), used.saturating_sub(before).min(take))
                            }
                            Ok(None) => (Ok(None), take),
                            Err(e) => (Err(e), 0),
                        }
                    }
                };
                match parsed {
                    Ok(Some(head)) => {
                        let body = self.framing(&head, hint);
                        let kind = head.kind;
                        let status = head.status;
                        out.push(StreamEvent::Head {
                            head,
                            at_ns: start_ns,
                        });
                        self.begin_body(body, kind, status, last_ns, out);
                        Some(&data[consumed..])
                    }
                    Ok(None) => None,
                    Err(e) => {
                        let reason = match e {
                            HeadError::NotHttp => DropReason::NotHttp,
                            HeadError::Malformed => DropReason::Malformed,
                        };
                        self.lose(out, reason);
                        None
                    }
                }
            }
            State::Body(Body::Fixed(left)) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.state = State::Idle;
                    out.push(StreamEvent::End { at_ns: last_ns });
                }
                Some(&data[n as usize..])
            }
            State::Body(Body::UntilClose) => None,
            State::Body(Body::Chunked(_)) => self.chunked(data, last_ns, out),
            State::Lost | State::Opaque => None,
        }
    }

    fn framing(&self, head: &Head, hint: &mut dyn BodyHint) -> Option<Body> {
        match head.kind {
            Kind::Request => {
                if head.chunked {
                    Some(Body::Chunked(Chunk::Size))
                } else {
                    match head.content_length {
                        Some(0) | None => None,
                        Some(n) => Some(Body::Fixed(n)),
                    }
                }
            }
            Kind::Response => {
                let status = head.status.unwrap_or(0);
                if (100..200).contains(&status) || status == 204 || status == 304 {
                    return None;
                }
                if hint.response_has_no_body() {
                    return None;
                }
                if head.chunked {
                    Some(Body::Chunked(Chunk::Size))
                } else {
                    match head.content_length {
                        Some(0) => None,
                        Some(n) => Some(Body::Fixed(n)),
                        None => Some(Body::UntilClose),
                    }
                }
            }
        }
    }

    fn begin_body(
        &mut self,
        body: Option<Body>,
        kind: Kind,
        status: Option<u16>,
        at_ns: u64,
        out: &mut Vec<StreamEvent>,
    ) {
        if kind == Kind::Response && status == Some(101) {
            out.push(StreamEvent::End { at_ns });
            self.state = State::Opaque;
            return;
        }
        match body {
            Some(b) => self.state = State::Body(b),
            None => {
                self.state = State::Idle;
                // An interim (1xx) response is not the end of anything.
                let interim = kind == Kind::Response && matches!(status, Some(100..=199));
                if !interim {
                    out.push(StreamEvent::End { at_ns });
                }
            }
        }
    }

    fn chunked<'a>(
        &mut self,
        data: &'a [u8],
        at_ns: u64,
        out: &mut Vec<StreamEvent>,
    ) -> Option<&'a [u8]> {
        let State::Body(Body::Chunked(chunk)) = &mut self.state else {
            return None;
        };
        match chunk {
            Chunk::Size | Chunk::Trailers => {
                let trailers = matches!(chunk, Chunk::Trailers);
                let (line, consumed, complete) = take_line(&mut self.line, data);
                if !complete {
                    if self.line.len() > 1024 {
                        self.lose(out, DropReason::Malformed);
                        return None;
                    }
                    return Some(&data[consumed..]);
                }
                if trailers {
                    if line.is_empty() {
                        self.state = State::Idle;
                        out.push(StreamEvent::End { at_ns });
                    }
                    return Some(&data[consumed..]);
                }
                let mut with_crlf = line;
                with_crlf.extend_from_slice(b"\r\n");
                match httparse::parse_chunk_size(&with_crlf) {
                    Ok(httparse::Status::Complete((_, 0))) => *chunk = Chunk::Trailers,
                    Ok(httparse::Status::Complete((_, n))) => *chunk = Chunk::Data(n),
                    _ => {
                        self.lose(out, DropReason::Malformed);
                        return None;
                    }
                }
                Some(&data[consumed..])
            }
            Chunk::Data(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    *chunk = Chunk::DataEnd(2);
                }
                Some(&data[n as usize..])
            }
            Chunk::DataEnd(left) => {
                let n = (*left as usize).min(data.len());
                *left -= n as u8;
                if *left == 0 {
                    *chunk = Chunk::Size;
                }
                Some(&data[n..])
            }
        }
    }
}

/// Appends to `line` up to and including a LF. Returns the line without CRLF when complete,
/// the bytes consumed, and whether the line is complete.
fn take_line(line: &mut Vec<u8>, data: &[u8]) -> (Vec<u8>, usize, bool) {
    match memchr::memchr(b'\n', data) {
        Some(i) => {
            line.extend_from_slice(&data[..i]);
            let mut l = std::mem::take(line);
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            (l, i + 1, true)
        }
        None => {
            line.extend_from_slice(data);
            (Vec::new(), data.len(), false)
        }
    }
}

/// How many bytes of `data` complete a head whose earlier part is `prev`: the position just
/// past the first blank line. httparse accepts `\r\n\r\n`, `\n\n`, `\r\n\n` and `\n\r\n`;
/// each ends with a LF preceded by a LF, or by CR LF.
fn head_end(prev: &[u8], data: &[u8]) -> Option<usize> {
    // Heads have a handful of LFs: visit those (SIMD memchr) rather than building a substring
    // searcher per call.
    let byte_before = |i: usize, back: usize| -> Option<u8> {
        if i >= back {
            Some(data[i - back])
        } else {
            let k = prev.len().checked_sub(back - i)?;
            Some(prev[k])
        }
    };
    for i in memchr::memchr_iter(b'\n', data) {
        match byte_before(i, 1) {
            Some(b'\n') => return Some(i + 1),
            Some(b'\r') if byte_before(i, 2) == Some(b'\n') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Whether a record plausibly begins a message, for resynchronising after a loss.
pub fn starts_like_head(data: &[u8]) -> bool {
    if data.starts_with(b"HTTP/1.") {
        return true;
    }
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|m| data.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_split_terminators() {
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", b"\r\nx"), Some(2));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", b"\nx"), Some(1));
        assert_eq!(head_end(b"GET / HTTP/1.1\r", b"\n\r\n"), Some(3));
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }
}
