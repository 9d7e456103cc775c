//! Protocol reconstruction: byte streams per connection in, typed request/response exchanges out.

pub mod http1;

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

/// Which end of a connection the observed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}
