//! One record's path, stage by stage and never back: capture (decoded record, sockets
//! resolved) → its source → correlate → sinks. Each step hands the next what it made.

use crate::capture::records::{decode, DecodeError, Event};
use crate::capture::sockets::{SockLookup, Sockets};
use crate::correlate::Correlator;
use crate::metadata::{ProcessInfo, Processes};
use crate::protocols::Conventions;
use crate::sinks::Sink;
use crate::sources::{CapturePoint, Context, Made, Source};
use crate::telemetry::counters::{Counter, Stats};
use std::sync::Arc;

/// What the pipeline tells discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Exec(u32),
    Exit(u32),
}

pub struct Pipeline {
    processes: Processes,
    sockets: Sockets,
    sources: Vec<Box<dyn Source>>,
    correlate: Correlator,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<Stats>,
    /// What the sources made from one record, reused between records.
    made: Vec<Made>,
    /// Whether /proc may be read; off in benchmarks, where pids are synthetic.
    use_proc: bool,
}

impl Pipeline {
    pub fn new(
        lookup: Box<dyn SockLookup>,
        sources: Vec<Box<dyn Source>>,
        sinks: Vec<Box<dyn Sink>>,
        stats: Arc<Stats>,
        conv: Conventions,
    ) -> Pipeline {
        Pipeline {
            processes: Processes::with_enrichers(vec![Box::new(
                crate::metadata::container::ContainerEnricher::new(crate::metadata::host_name()),
            )]),
            sockets: Sockets::new(lookup, true),
            sources,
            correlate: Correlator::new(stats.clone(), &conv),
            sinks,
            stats,
            made: Vec::new(),
            use_proc: true,
        }
    }

    /// For benchmarks: identify every pid as `process` without touching /proc.
    pub fn with_fixed_process(mut self, process: ProcessInfo) -> Self {
        self.use_proc = false;
        self.sockets.without_proc();
        self.processes.insert(Arc::new(process));
        self
    }

    pub fn handle(&mut self, bytes: &[u8]) -> Option<Notice> {
        let event = match decode(bytes) {
            Ok(e) => e,
            Err(_) => {
                self.stats.add(Counter::RecordsUndecodable, 1);
                return None;
            }
        };
        let notice = match event {
            Event::Exec { tgid, comm } => {
                // Read now: a short-lived client may be gone by its first call's end. If it
                // already is, its task name still identifies it.
                if self.use_proc && self.processes.refresh(tgid).is_none() {
                    self.processes.insert(Arc::new(ProcessInfo::from_parts(
                        tgid,
                        comm.clone(),
                        comm,
                        b"",
                    )));
                }
                Some(Notice::Exec(tgid))
            }
            Event::Exit { tgid } => {
                self.process_exit(tgid);
                Some(Notice::Exit(tgid))
            }
            Event::Source { kind, bytes } => {
                let mut cx = Context {
                    processes: &mut self.processes,
                    sockets: &mut self.sockets,
                };
                let taken = match self.sources.iter_mut().find(|s| s.kinds().contains(&kind)) {
                    Some(s) => s.record(kind, bytes, &mut cx, &mut self.made),
                    None => Err(DecodeError::UnknownKind(kind)),
                };
                if taken.is_err() {
                    self.stats.add(Counter::RecordsUndecodable, 1);
                }
                None
            }
        };
        self.hand_on();
        notice
    }

    /// What the sources made, through correlate, to the sinks.
    fn hand_on(&mut self) {
        for m in self.made.drain(..) {
            self.correlate.take(m);
        }
        for call in self.correlate.ready() {
            for s in &mut self.sinks {
                s.on_call(&call);
            }
        }
        for e in self.correlate.ready_net() {
            for s in &mut self.sinks {
                s.on_net(&e);
            }
        }
    }

    /// Capture point `point` traces `pid`: known before its first record, so that another
    /// capture point's view of its first request waits for this one's.
    pub fn traced(&mut self, point: CapturePoint, pid: u32) {
        self.correlate.seen(point, pid);
    }

    /// Ends what went quiet.
    pub fn tick(&mut self, now_mono_ns: u64) {
        for s in &mut self.sources {
            s.tick(now_mono_ns, &mut self.made);
        }
        self.hand_on();
    }

    fn process_exit(&mut self, tgid: u32) {
        let mut cx = Context {
            processes: &mut self.processes,
            sockets: &mut self.sockets,
        };
        for s in &mut self.sources {
            s.process_exit(tgid, &mut cx, &mut self.made);
        }
        self.hand_on();
        self.processes.remove(tgid);
        self.sockets.process_exit(tgid);
        for s in &mut self.sinks {
            s.on_process_exit(tgid);
        }
    }

    /// Called after each batch of records, so sinks write once per batch.
    pub fn flush(&mut self) {
        self.correlate.end_batch();
        self.hand_on();
        for s in &mut self.sinks {
            s.flush();
        }
    }

    /// Ends every connection and releases every held call, for shutdown.
    pub fn close_all(&mut self) {
        for s in &mut self.sources {
            s.close_all(&mut self.made);
        }
        self.hand_on();
        self.correlate.close_all();
        self.flush();
    }
}
