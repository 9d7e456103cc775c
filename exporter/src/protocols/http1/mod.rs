//! HTTP/1.x over one connection: two [`Stream`]s (what the process sent and what it received)
//! and the pairing of requests with responses in order, which is what keep-alive and
//! pipelining guarantee.

mod head;
mod stream;

pub use head::{parse_head, Head, HeadError, Kind};
pub use stream::MAX_HEAD;

use super::{DropReason, Role};
use std::collections::VecDeque;
use stream::{BodyHint, Stream, StreamEvent};

/// Requests outstanding on one connection before we stop queueing.
pub const MAX_PENDING: usize = 64;

/// What a call needs of a response head. Only this is kept: an exchange moves through
/// several queues, and a whole head is a few hundred bytes to copy at each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: Option<u16>,
}

/// A complete request/response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub role: Role,
    pub request: Head,
    pub response: Response,
    /// First byte of the request, `CLOCK_MONOTONIC` ns.
    pub start_ns: u64,
    /// Last byte of the response.
    pub end_ns: u64,
}

#[derive(Debug)]
struct Pending {
    request: Head,
    start_ns: u64,
    response: Option<Response>,
}

/// Output of feeding bytes: exchanges completed and bytes given up on.
#[derive(Debug, Default)]
pub struct Output {
    pub exchanges: Vec<Exchange>,
    pub drops: Vec<DropReason>,
}

#[derive(Debug, Default)]
pub struct Http1Conn {
    role: Option<Role>,
    sent: Stream,
    received: Stream,
    pending: VecDeque<Pending>,
    events: Vec<StreamEvent>,
    requests: u64,
    responses: u64,
}

/// Answers the response stream's question "is this a response to HEAD?" for each response
/// head in order, including several in one record.
struct HeadHint<'a> {
    pending: &'a VecDeque<Pending>,
    next: usize,
}

impl BodyHint for HeadHint<'_> {
    fn response_has_no_body(&mut self) -> bool {
        let p = self.pending.get(self.next);
        self.next += 1;
        p.is_some_and(|p| p.request.method == "HEAD" || p.request.method == "CONNECT")
    }
}

impl Http1Conn {
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Request heads accepted so far on this connection.
    pub fn requests_seen(&self) -> u64 {
        self.requests
    }

    /// Final response heads seen so far (interim 1xx ones are not counted).
    pub fn responses_seen(&self) -> u64 {
        self.responses
    }

    /// The newest request's `traceparent`, while it waits for its response.
    pub fn newest_traceparent(&self) -> Option<&str> {
        self.pending.back()?.request.traceparent.as_deref()
    }

    /// A role known from the socket (connect or accept) avoids guessing from content.
    pub fn set_role(&mut self, role: Role) {
        self.role.get_or_insert(role);
    }

    /// True once the connection stopped being HTTP/1.x (upgraded, or never was).
    pub fn is_opaque(&self) -> bool {
        self.sent.is_opaque() || self.received.is_opaque()
    }

    /// Feeds one capture record. `egress` is true for bytes the process sent.
    pub fn feed(
        &mut self,
        egress: bool,
        data: &[u8],
        len: usize,
        first_ns: u64,
        last_ns: u64,
        out: &mut Output,
    ) {
        // After an upgrade both directions carry the new protocol.
        if self.is_opaque() {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        {
            let answered = self.pending.iter().filter(|p| p.response.is_some()).count();
            let mut hint = HeadHint {
                pending: &self.pending,
                next: answered,
            };
            let stream = if egress {
                &mut self.sent
            } else {
                &mut self.received
            };
            stream.feed(data, len, first_ns, last_ns, &mut hint, &mut events);
        }
        for ev in events.drain(..) {
            self.on_event(egress, ev, out);
        }
        self.events = events;
    }

    /// The connection ended: complete what can be completed, count what cannot.
    pub fn close(&mut self, out: &mut Output) {
        let mut events = Vec::new();
        self.sent.close(&mut events);
        let n_sent = events.len();
        self.received.close(&mut events);
        for (i, ev) in events.into_iter().enumerate() {
            self.on_event(i < n_sent, ev, out);
        }
        for _ in self.pending.drain(..) {
            out.drops.push(DropReason::NoResponse);
        }
    }

    /// Whether a body is still open that only the connection's end can finish.
    pub fn awaiting_close(&self) -> bool {
        self.sent.awaiting_close() || self.received.awaiting_close()
    }

    fn on_event(&mut self, egress: bool, ev: StreamEvent, out: &mut Output) {
        match ev {
            StreamEvent::Drop(r) => out.drops.push(r),
            StreamEvent::Head { head, at_ns } => self.on_head(egress, head, at_ns, out),
            StreamEvent::End { at_ns } => self.on_end(egress, at_ns, out),
        }
    }

    /// Which way requests flow for the process's role.
    fn requests_are_egress(&self) -> Option<bool> {
        self.role.map(|r| r == Role::Client)
    }

    fn on_head(&mut self, egress: bool, head: Head, at_ns: u64, out: &mut Output) {
        let is_request = head.kind == Kind::Request;
        if self.role.is_none() {
            // A request we sent, or a response we received, makes us the client.
            self.role = Some(if is_request == egress {
                Role::Client
            } else {
                Role::Server
            });
        }
        let requests_egress = self.requests_are_egress().unwrap_or(egress);
        if is_request != (egress == requests_egress) {
            out.drops.push(DropReason::UnexpectedMessage);
            return;
        }
        if is_request {
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                out.drops.push(DropReason::QueueFull);
            }
            self.pending.push_back(Pending {
                request: head,
                start_ns: at_ns,
                response: None,
            });
            self.requests += 1;
        } else {
            // 1xx interim responses precede the real one; they answer nothing.
            if matches!(head.status, Some(100..=199)) && head.status != Some(101) {
                return;
            }
            self.responses += 1;
            match self.pending.iter_mut().find(|p| p.response.is_none()) {
                Some(p) => {
                    p.response = Some(Response {
                        status: head.status,
                    })
                }
                None => out.drops.push(DropReason::ResponseWithoutRequest),
            }
        }
    }

    fn on_end(&mut self, egress: bool, at_ns: u64, out: &mut Output) {
        let requests_egress = self.requests_are_egress().unwrap_or(!egress);
        if egress == requests_egress {
            // The end of a request body: nothing to do, the response decides the span end.
            return;
        }
        if self.pending.front().is_some_and(|p| p.response.is_some()) {
            let p = self.pending.pop_front().expect("front exists");
            let Some(response) = p.response else { return };
            out.exchanges.push(Exchange {
                role: self.role.unwrap_or(Role::Client),
                request: p.request,
                response,
                start_ns: p.start_ns,
                end_ns: at_ns.max(p.start_ns),
            });
        }
    }
}

#[cfg(test)]
mod tests;
