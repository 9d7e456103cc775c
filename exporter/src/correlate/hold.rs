//! How long a call may wait before it goes out: the one hold policy of `correlate`.
//!
//! A call is held only while another record may still change it, and never longer than the
//! record it waits for can take to arrive. Records reach user space in batches (the ring buffer
//! is drained every `DRAIN_INTERVAL_MS`, 20 ms, while records come, or sooner when it fills),
//! and the two ends of a request on this host finish in a known order:
//!
//! 1. **A server call waits for its caller on this host** ([`JOIN_GRACE`]): the caller's call
//!    ends after the server's (it still has to read the response), so its record comes in the
//!    same batch or a later one. OpenSSL connections, whose ends are matched by request
//!    position, wait [`POSITION_BATCHES`] batches; Go server requests, matched by time, wait
//!    `JOIN_GRACE`.
//! 2. **A request two capture points saw waits for its other view** ([`GO_HOLD`],
//!    [`SSL_HOLD`]): both are written within microseconds, but the Go view may itself have
//!    waited out step 1 first, so the OpenSSL view waits that long and more.
//! 3. **What is kept after a call went out**, for records that refer to it late:
//!    [`SETTLED_KEEP`] (client calls that outlive their server request), [`RECENT_KEEP`] (a
//!    second view read after the first went out).
//!
//! Every wait is bounded, so memory is bounded by the call rate times these times, and each
//! table has its own cap besides.

use std::time::Duration;

/// How long a Go server request whose caller is on this host waits for that caller's record.
pub const JOIN_GRACE: Duration = Duration::from_millis(150);
/// Batches an OpenSSL client request's ids stay claimable by the server call at the same
/// position, and a server call waits for its client's request to be read.
pub const POSITION_BATCHES: u64 = 2;
/// How long a Go view of a request waits for its OpenSSL view.
pub const GO_HOLD: Duration = Duration::from_millis(60);
/// How long an OpenSSL view waits for its Go view: a Go server request may itself wait
/// [`JOIN_GRACE`] for its caller before it is released.
pub const SSL_HOLD: Duration = Duration::from_millis(300);
/// How long a call that went out is kept for a second view of it read afterwards.
pub const RECENT_KEEP: Duration = Duration::from_secs(2);
/// How long a settled Go request's trace is kept for client calls that outlive it (a
/// goroutine the handler left running).
pub const SETTLED_KEEP: Duration = Duration::from_secs(2);
/// Go request contexts older than this are settled as they are: their request never ended
/// (or its record was lost).
pub const CONTEXT_TTL: Duration = Duration::from_secs(120);
/// How long a connection whose caller never showed up is remembered as having none. Its later
/// requests are then settled at once instead of each waiting out [`JOIN_GRACE`]: a busy
/// keep-alive connection from an untraced client (a load balancer, wrk) would otherwise hold
/// every request it carries.
pub const NO_CALLER_KEEP: Duration = Duration::from_secs(60);
