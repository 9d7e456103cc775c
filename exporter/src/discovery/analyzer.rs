//! Binary analysis off the capture loop. Any user can run a binary crafted to be slow or
//! huge to analyse; were it analysed on the loop that drains the ring buffer, capture would
//! stop for the whole host meanwhile. So workers analyse, the loop asks and moves on: an
//! answer not ready yet is `Pending`, and the processes waiting for it are scanned again once
//! it is. Each binary has a memory budget (in the symbolizer) and a time budget (here); over
//! either, it is refused with its reason, counted, and not traced.

use sightline_symbolizer::{Analysis, AttachPoint, Cache, Options, SymbolizeError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one binary's analysis may take. A 100 MB Go binary takes about a second.
pub const TIME_BUDGET: Duration = Duration::from_secs(10);
/// Analyses at once; more would take cores from the traced services.
const WORKERS: usize = 2;
/// Workers that ran over the time budget and were replaced, at most: a worker cannot be
/// stopped, only left behind, so this bounds the threads a hostile binary can tie up.
const MAX_REPLACED: usize = 8;
/// Analyses asked for and not answered, at most; beyond, a file waits for a later scan.
const MAX_IN_FLIGHT: usize = 4096;

/// What is wanted of a file: its OpenSSL functions only (a library), or the whole analysis
/// (an executable, which may be a Go program).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wanted {
    Openssl,
    Whole,
}

/// Why a file is not traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not ELF, corrupt, unreadable: nothing to probe, nothing to report per file.
    Unusable(String),
    NotRegular,
    OverMemory(String),
    OverTime,
}

#[derive(Debug, Clone)]
pub enum Answer {
    Openssl(Result<Option<Vec<AttachPoint>>, Refused>),
    Whole(Result<Arc<Analysis>, Refused>),
}

pub enum Lookup<T> {
    Ready(T),
    Pending,
}

type Key = ((u64, u64), Wanted);

struct Job {
    key: Key,
    path: PathBuf,
}

struct Done {
    key: Key,
    answer: Answer,
}

/// Who waits for an answer: a process to scan again, or (at start) a system library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiter {
    Process(u32),
    Library(PathBuf),
}

pub struct Analyzer {
    jobs: Sender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    wake: Arc<tokio::sync::Notify>,
    answers: HashMap<Key, Answer>,
    in_flight: HashMap<Key, (Instant, Vec<Waiter>)>,
    replaced: usize,
    /// Refusals since the last look, by reason, for the counters.
    pub refused: Vec<Refused>,
}

impl Default for Analyzer {
    fn default() -> Analyzer {
        Analyzer::new()
    }
}

impl Analyzer {
    pub fn new() -> Analyzer {
        let (jobs, queue) = channel();
        let (done_tx, done) = channel();
        let mut a = Analyzer {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            done_tx,
            done,
            wake: Arc::new(tokio::sync::Notify::new()),
            answers: HashMap::new(),
            in_flight: HashMap::new(),
            replaced: 0,
            refused: Vec::new(),
        };
        for _ in 0..WORKERS {
            a.spawn_worker();
        }
        a
    }

    fn spawn_worker(&mut self) {
        let queue = self.queue.clone();
        let done = self.done_tx.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("sightline-analysis".into())
            .spawn(move || {
                // Its own cache: a shared one would be locked through a slow analysis.
                let mut symbols = Cache::default();
                loop {
                    let job = {
                        let Ok(q) = queue.lock() else { return };
                        match q.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        }
                    };
                    let answer = match job.key.1 {
                        Wanted::Openssl => {
                            Answer::Openssl(symbols.openssl_points(&job.path).map_err(refusal))
                        }
                        Wanted::Whole => Answer::Whole(
                            symbols
                                .analysis(&job.path, &Options::default())
                                .map_err(refusal),
                        ),
                    };
                    if done
                        .send(Done {
                            key: job.key,
                            answer,
                        })
                        .is_err()
                    {
                        return;
                    }
                    wake.notify_one();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start an analysis worker: {e}");
        }
    }

    /// Wakes the capture loop when an answer is ready.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The answer for the file, or `Pending` (it is being analysed; `waiter` is told).
    pub fn ask(
        &mut self,
        inode: (u64, u64),
        wanted: Wanted,
        path: &std::path::Path,
        waiter: Waiter,
    ) -> Lookup<Answer> {
        let key = (inode, wanted);
        if let Some(a) = self.answers.get(&key) {
            return Lookup::Ready(a.clone());
        }
        if let Some((_, waiting)) = self.in_flight.get_mut(&key) {
            if !waiting.contains(&waiter) {
                waiting.push(waiter);
            }
            return Lookup::Pending;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Lookup::Pending;
        }
        let job = Job {
            key,
            path: path.to_owned(),
        };
        if self.jobs.send(job).is_ok() {
            self.in_flight.insert(key, (Instant::now(), vec![waiter]));
        }
        Lookup::Pending
    }

    /// Takes in the answers ready, refuses what ran over its time, and returns who waited for
    /// them.
    pub fn collect(&mut self, now: Instant) -> Vec<Waiter> {
        let mut waiters = Vec::new();
        while let Ok(d) = self.done.try_recv() {
            // An answer that came after its time ran out stays refused.
            if let Some((_, w)) = self.in_flight.remove(&d.key) {
                self.note(&d.answer);
                self.answers.insert(d.key, d.answer);
                waiters.extend(w);
            }
        }
        let late: Vec<Key> = self
            .in_flight
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) > TIME_BUDGET)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            let (_, w) = self.in_flight.remove(&key).expect("listed above");
            let answer = match key.1 {
                Wanted::Openssl => Answer::Openssl(Err(Refused::OverTime)),
                Wanted::Whole => Answer::Whole(Err(Refused::OverTime)),
            };
            self.note(&answer);
            self.answers.insert(key, answer);
            waiters.extend(w);
            // The worker is still busy with it: another takes its place.
            if self.replaced < MAX_REPLACED {
                self.replaced += 1;
                self.spawn_worker();
            }
        }
        waiters
    }

    fn note(&mut self, answer: &Answer) {
        let refused = match answer {
            Answer::Openssl(Err(r)) | Answer::Whole(Err(r)) => r,
            _ => return,
        };
        if !matches!(refused, Refused::Unusable(_)) {
            self.refused.push(refused.clone());
        }
    }

    /// Analyses not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

fn refusal(e: SymbolizeError) -> Refused {
    match e {
        SymbolizeError::NotRegular { .. } => Refused::NotRegular,
        e @ SymbolizeError::OverBudget { .. } => Refused::OverMemory(e.to_string()),
        e => Refused::Unusable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(a: &mut Analyzer) -> Vec<Waiter> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let w = a.collect(Instant::now());
            if !w.is_empty() || Instant::now() > end {
                return w;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn answers_come_later_and_once() {
        use std::os::unix::fs::MetadataExt;
        let lib = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let m = std::fs::metadata(lib).unwrap();
        let inode = (m.dev(), m.ino());
        let mut a = Analyzer::new();
        let w = Waiter::Process(7);
        assert!(matches!(
            a.ask(inode, Wanted::Openssl, lib, w.clone()),
            Lookup::Pending
        ));
        assert!(matches!(
            a.ask(inode, Wanted::Openssl, lib, w.clone()),
            Lookup::Pending
        ));
        assert_eq!(wait(&mut a), vec![w.clone()]);
        let Lookup::Ready(Answer::Openssl(Ok(Some(points)))) =
            a.ask(inode, Wanted::Openssl, lib, w)
        else {
            panic!("libssl has OpenSSL's functions");
        };
        assert!(points.iter().any(|p| p.symbol == "SSL_read"));
        assert_eq!(a.in_flight(), 0);
        assert!(a.refused.is_empty());
    }

    #[test]
    fn a_fifo_is_refused_for_what_it_is() {
        let dir = std::env::temp_dir().join(format!("analyzer-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("libfakessl.so");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let mut a = Analyzer::new();
        let _ = a.ask((0, 1), Wanted::Whole, &fifo, Waiter::Process(1));
        assert_eq!(wait(&mut a), vec![Waiter::Process(1)]);
        assert_eq!(a.refused, vec![Refused::NotRegular]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
