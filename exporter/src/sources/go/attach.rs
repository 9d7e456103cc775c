//! Where the Go probes go in a Go executable: entry uprobes, and uprobes on each RET site the
//! symbolizer found (a uretprobe would rewrite a return address on a stack Go may move).

use super::offsets::go_offsets;
use crate::capture::loader::Loader;
use crate::discovery::analyzer::{Answer, Lookup, Wanted};
use crate::sources::{Attach, AttachContext, Found};
use crate::telemetry::counters::{Counter, Stats};
use anyhow::Context;
use sightline_common::{programs, GoOffsets};
use sightline_symbolizer::go::GoInfo;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What was done with a Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoFileState {
    NotGo,
    Attached {
        offsets: GoOffsets,
        functions: Vec<&'static str>,
    },
    /// A Go binary sightline cannot trace, and why (told once per file).
    Unusable(String),
}

/// Go executables are probed once per file; each process running one gives the probes its
/// struct offsets.
#[derive(Default)]
pub struct GoAttach {
    files: HashMap<(u64, u64), GoFileState>,
    /// Processes whose offsets the Go probes hold.
    pids: HashSet<u32>,
}

impl Attach for GoAttach {
    fn consider(&mut self, found: &Found<'_>, cx: &mut AttachContext<'_>) {
        let Some(pid) = found.pid else {
            return;
        };
        if self.pids.contains(&pid) {
            return;
        }
        if let Entry::Vacant(slot) = self.files.entry(found.inode) {
            let asked = cx
                .analyzer
                .ask(found.inode, Wanted::Whole, found.path, cx.waiter.clone());
            let Lookup::Ready(Answer::Whole(analysis)) = asked else {
                return;
            };
            let state = match analysis {
                Ok(a) => match &a.go {
                    None => GoFileState::NotGo,
                    Some(go) => probe(found.path, go, cx.loader, cx.stats),
                },
                Err(_) => GoFileState::NotGo,
            };
            slot.insert(state);
        }
        if let Some(GoFileState::Attached { offsets, .. }) = self.files.get(&found.inode) {
            match cx.loader.set_go_process(pid, offsets) {
                Ok(()) => {
                    self.pids.insert(pid);
                }
                Err(e) => tracing::warn!(pid, "cannot trace this Go process: {e:#}"),
            }
        }
    }

    fn traces(&self, pid: u32) -> bool {
        self.pids.contains(&pid)
    }

    fn pids(&self) -> Vec<u32> {
        self.pids.iter().copied().collect()
    }

    fn forget(&mut self, pid: u32, loader: &mut Loader) {
        if self.pids.remove(&pid) {
            loader.forget_go_process(pid);
        }
    }
}

/// Probes a Go executable, if the symbolizer found the offsets the probes cannot do without.
fn probe(path: &Path, go: &GoInfo, loader: &mut Loader, stats: &Stats) -> GoFileState {
    let shown = std::fs::canonicalize(path).unwrap_or(path.to_owned());
    let version = go.version.as_deref().unwrap_or("unknown Go");
    let offsets = match go_offsets(go) {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(file = %shown.display(), version, "not tracing this Go program: {why}; `sightline symbols {}` shows every source", shown.display());
            return GoFileState::Unusable(why);
        }
    };
    match attach(loader, path, go, None) {
        Ok(functions) if functions.is_empty() => GoFileState::NotGo,
        Ok(functions) => {
            tracing::info!(file = %shown.display(), version, ?functions, "probing Go net/http");
            GoFileState::Attached { offsets, functions }
        }
        Err(e) => {
            stats.add(Counter::AttachFailures, 1);
            tracing::warn!(file = %shown.display(), "cannot probe Go: {e:#}");
            GoFileState::Unusable(format!("{e:#}"))
        }
    }
}

/// Go functions sightline probes: (symbols, program at entry, program at each RET); the first
/// of the symbols that the binary has is probed. Each needs its return sites; a function
/// without them is not probed at all.
pub const GO_PROBES: [(&[&str], &str, &str); 4] = [
    (
        &["net/http.serverHandler.ServeHTTP"],
        programs::GO_SERVER_ENTER,
        programs::GO_SERVER_RET,
    ),
    // The client call: `Transport.RoundTrip` is one line, calling `roundTrip`, and is
    // inlined where a caller holds a *Transport (caddy's proxy), so the body is where every
    // call passes. Probing both would cost two more hits per request for nothing.
    (
        &[
            "net/http.(*Transport).roundTrip",
            "net/http.(*Transport).RoundTrip",
        ],
        programs::GO_CLIENT_ENTER,
        programs::GO_CLIENT_RET,
    ),
    (
        &["runtime.newproc1"],
        programs::GO_NEWPROC_ENTER,
        programs::GO_NEWPROC_RET,
    ),
    // Every request of golang.org/x/net/http2's own server, which h2c and ServeConn serve
    // without serverHandler.ServeHTTP (with ConfigureServer, ServeHTTP runs inside it).
    (
        &["golang.org/x/net/http2.(*serverConn).runHandler"],
        programs::GO_XSERVER_ENTER,
        programs::GO_SERVER_RET,
    ),
];

/// Go functions probed at entry only: (symbol, program).
/// The first symbol of each list that the binary has is probed.
pub const GO_ENTRY_PROBES: [(&[&str], &str); 2] = [
    (
        &["net/http.(*persistConn).roundTrip"],
        programs::GO_PCONN_ENTER,
    ),
    (
        &[
            // Go 1.23+: the body moved here, and RoundTrip is inlined into its caller.
            "net/http.(*http2ClientConn).roundTrip",
            "net/http.(*http2ClientConn).RoundTrip",
        ],
        programs::GO_H2CC_ENTER,
    ),
];

/// Go functions where a traceparent is written into a request in the process's memory:
/// (symbol, program at entry, program at each call to the symbolizer's callee, if any).
pub const GO_WRITE_PROBES: [(&str, &str, Option<&str>); 2] = [
    (
        "net/http.(*transferWriter).writeHeader",
        programs::GO_TP_H1,
        None,
    ),
    (
        "net/http.(*http2ClientConn).writeHeaders",
        programs::GO_TP_H2_ENTER,
        Some(programs::GO_TP_H2_FLUSH),
    ),
];

/// Attaches the Go probes to a Go binary: an entry uprobe on each function and one on each of
/// its RET instructions (never a uretprobe). With `instead`, every program is replaced by that
/// one (benchmarks attach the empty probe at the same points). Returns the functions probed.
pub fn attach(
    loader: &mut Loader,
    path: &Path,
    go: &GoInfo,
    instead: Option<&'static str>,
) -> anyhow::Result<Vec<&'static str>> {
    let mut probed = Vec::new();
    // Where g records its creator (Go 1.21+), no probe on every goroutine start is needed.
    let parent_in_g = go
        .field("runtime.g", "parentGoid")
        .is_some_and(|f| f.offset.is_some());
    for (symbols, entry, ret) in GO_PROBES {
        if symbols == ["runtime.newproc1"] && parent_in_g {
            continue;
        }
        let Some((symbol, f, rets)) = symbols.iter().find_map(|s| {
            let f = go.function(s)?;
            let rets = f.returns.as_ref().filter(|r| !r.is_empty())?;
            Some((*s, f, rets))
        }) else {
            continue;
        };
        // Return sites first: an entry without its returns would leave calls in flight.
        let (entry, ret) = instead.map_or((entry, ret), |p| (p, p));
        let sites = rets.iter().map(|r| (ret, r.file_offset));
        for (prog, offset) in sites.chain([(entry, f.file_offset)]) {
            loader
                .uprobe(prog, offset, path)
                .with_context(|| format!("probing {symbol}"))?;
        }
        probed.push(symbol);
    }
    if probed.is_empty() {
        return Ok(probed);
    }
    for (symbols, prog) in GO_ENTRY_PROBES {
        let Some((symbol, f)) = symbols.iter().find_map(|s| go.function(s).map(|f| (*s, f))) else {
            continue;
        };
        loader
            .uprobe(instead.unwrap_or(prog), f.file_offset, path)
            .with_context(|| format!("probing {symbol}"))?;
        probed.push(symbol);
    }
    if loader.memory_writes() {
        for (symbol, entry, at_calls) in GO_WRITE_PROBES {
            let Some(f) = go.function(symbol) else {
                continue;
            };
            let calls = f.calls.as_deref().unwrap_or_default();
            if at_calls.is_some() && calls.is_empty() {
                continue;
            }
            // The call sites first: an entry without them would leave headers waiting.
            let sites = at_calls
                .into_iter()
                .flat_map(|p| calls.iter().map(move |c| (p, c.file_offset)));
            for (prog, offset) in sites.chain([(entry, f.file_offset)]) {
                loader
                    .uprobe(instead.unwrap_or(prog), offset, path)
                    .with_context(|| format!("probing {symbol}"))?;
            }
            probed.push(symbol);
        }
    }
    Ok(probed)
}
