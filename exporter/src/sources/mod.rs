//! One folder per capture point, each behind [`Source`]: it says where to attach in a binary
//! that has what it probes (its `attach` module), and turns its records into protocol-neutral
//! calls that it returns as [`Made`]. No source calls into a later stage.
//!
//! Adding a capture point is a folder here and a line in [`all`].

pub mod go;
pub mod openssl;
pub mod stream;
pub mod syscalls;
pub mod tcp;

use crate::capture::loader::Loader;
use crate::capture::records::DecodeError;
use crate::capture::sockets::{Role, Sockets};
use crate::correlate::same_host::Ends;
use crate::discovery::analyzer::{Analyzer, Waiter};
use crate::metadata::Processes;
use crate::protocols::call::Call;
use crate::protocols::trace_context::TraceParent;
use crate::protocols::Conventions;
use crate::telemetry::counters::Stats;
use otel_config::Selection;
use std::path::Path;
use std::sync::Arc;

/// Which capture point saw a call: a request two of them saw is reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapturePoint {
    Go,
    Openssl,
    /// The socket syscalls: plaintext from any runtime.
    Syscalls,
    /// The TCP tracepoints: network signals.
    Tcp,
}

/// What records are resolved against: who a process is, and where its sockets lead.
pub struct Context<'a> {
    pub processes: &'a mut Processes,
    pub sockets: &'a mut Sockets,
}

/// A connection seen as a byte stream, as it stands after a record: what `correlate` needs to
/// join its calls with the other end's.
#[derive(Debug, Clone)]
pub struct ConnView {
    pub point: CapturePoint,
    /// The process and the library's (or kernel's) handle of the connection.
    pub id: (u32, u64),
    pub ends: Option<Ends>,
    pub role: Option<Role>,
    /// Requests seen on it so far, answered or not.
    pub requests_seen: u64,
    /// Responses started on it so far.
    pub responses_seen: u64,
    /// The thread whose call moved the record's bytes (0 for the connection's end), and
    /// whether the process sent them.
    pub tid: u32,
    pub egress: bool,
    /// On a server connection after a read: the newest request's incoming `traceparent`.
    pub incoming: Option<TraceParent>,
    /// The connection is over.
    pub closed: bool,
}

/// What a source made from a record (or from time passing).
#[derive(Debug)]
pub enum Made {
    /// A byte-stream connection after a record, and the calls it finished.
    Stream { conn: ConnView, calls: Vec<Call> },
    /// A Go call, seen whole by the Go probes.
    Go(Box<GoCall>),
    /// A TCP connection event, for the network signals.
    Net(Box<tcp::NetEvent>),
}

/// A Go call, where it sits among its process's requests, and where its connection went.
#[derive(Debug)]
pub struct GoCall {
    pub call: Call,
    pub goroutine: go::call::Goroutine,
    pub conn: go::call::GoConn,
}

/// A capture point's user side.
pub trait Source: Send {
    /// The record kinds (`sightline_common::kind`) this capture point writes.
    fn kinds(&self) -> &'static [u32];
    /// One of its records, whole: decoded here, and what it finishes goes to `made`.
    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), DecodeError>;
    /// Time passed: what went quiet ends.
    fn tick(&mut self, _now_mono_ns: u64, _made: &mut Vec<Made>) {}
    /// A process exited: what it held ends.
    fn process_exit(&mut self, _pid: u32, _cx: &mut Context<'_>, _made: &mut Vec<Made>) {}
    /// Shutdown: everything ends.
    fn close_all(&mut self, _made: &mut Vec<Made>) {}
}

/// A file discovery found, for a capture point to look at.
pub struct Found<'a> {
    pub path: &'a Path,
    /// The file's (device, inode): a uprobe belongs to an inode, so attaching is per inode.
    pub inode: (u64, u64),
    /// The process whose executable this is; `None` for a library.
    pub pid: Option<u32>,
}

/// What attaching needs: the loader, the analyses (once per file, off the capture loop), who
/// is told when one is ready, the counters.
pub struct AttachContext<'a> {
    pub loader: &'a mut Loader,
    pub analyzer: &'a mut Analyzer,
    pub waiter: Waiter,
    pub stats: &'a Stats,
}

/// A capture point's side of discovery: where to attach in a file, and what a process needs.
pub trait Attach: Send {
    /// A library in the system's library directories, named `name`, is worth a look at start.
    fn wants_system_library(&self, _name: &str) -> bool {
        false
    }
    /// A library named `name` that a process maps is worth a look. A name test: every mapped
    /// file of every process is asked.
    fn wants_mapped_library(&self, _name: &str) -> bool {
        false
    }
    /// A regular file found (an executable, or a library asked for above): attach if it has
    /// what this capture point probes, once per inode.
    fn consider(&mut self, found: &Found<'_>, cx: &mut AttachContext<'_>);
    /// Whether this capture point traces process `pid` (known from `consider`).
    fn traces(&self, _pid: u32) -> bool {
        false
    }
    /// Every process it traces.
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    /// A process exited: what the kernel holds for it goes (its pid may be reused).
    fn forget(&mut self, _pid: u32, _loader: &mut Loader) {}
}

/// A capture point's two sides: what discovery asks (`attach`) and what the pipeline feeds
/// its records to (`source`).
pub struct Point {
    pub point: CapturePoint,
    pub source: Box<dyn Source>,
    pub attach: Box<dyn Attach>,
}

/// Every capture point, in the order records are offered to them. Adding one is a line here.
pub fn all(selection: &Selection, conv: Conventions, stats: &Arc<Stats>) -> Vec<Point> {
    vec![
        Point {
            point: CapturePoint::Openssl,
            source: Box::new(openssl::source(selection.clone(), conv, stats.clone())),
            attach: Box::<openssl::attach::OpensslAttach>::default(),
        },
        Point {
            point: CapturePoint::Go,
            source: Box::new(go::Go::new(selection.clone(), conv, stats.clone())),
            attach: Box::<go::attach::GoAttach>::default(),
        },
        Point {
            point: CapturePoint::Syscalls,
            source: Box::new(syscalls::source(selection.clone(), conv, stats.clone())),
            attach: Box::new(syscalls::SyscallsAttach),
        },
        Point {
            point: CapturePoint::Tcp,
            source: Box::new(tcp::Tcp::new(selection.clone(), conv, stats.clone())),
            attach: Box::new(tcp::TcpAttach),
        },
    ]
}

/// The capture points' two sides apart: the pipeline's and discovery's.
#[allow(clippy::type_complexity)]
pub fn split(points: Vec<Point>) -> (Vec<Box<dyn Source>>, Vec<(CapturePoint, Box<dyn Attach>)>) {
    points
        .into_iter()
        .map(|p| (p.source, (p.point, p.attach)))
        .unzip()
}
