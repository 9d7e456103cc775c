//! Where the OpenSSL probes go: every file that carries OpenSSL, once. A uprobe is keyed by
//! inode, so one attach covers every process mapping that file, now and later: the system's
//! libssl copies at start, every executable (node carries OpenSSL statically) and every
//! `*ssl*.so` a process maps.

use crate::capture::loader::Loader;
use crate::discovery::analyzer::{Answer, Lookup, Refused, Wanted};
use crate::sources::{Attach, AttachContext, Found};
use crate::telemetry::counters::Counter;
use anyhow::Context;
use sightline_common::programs;
use sightline_symbolizer::OpensslTarget;
use std::collections::HashMap;

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// No OpenSSL inside.
    NotTls,
    Attached {
        points: usize,
    },
    Failed(String),
    /// Over an analysis budget, or not a regular file.
    Refused(Refused),
}

#[derive(Default)]
pub struct OpensslAttach {
    /// What was done with each file, by inode.
    files: HashMap<(u64, u64), FileState>,
}

impl Attach for OpensslAttach {
    fn wants_system_library(&self, name: &str) -> bool {
        name.starts_with("libssl.so")
    }

    fn wants_mapped_library(&self, name: &str) -> bool {
        // BoringSSL and OpenSSL builds keep "ssl" in the library's name.
        name.contains("ssl") && name.contains(".so")
    }

    fn consider(&mut self, found: &Found<'_>, cx: &mut AttachContext<'_>) {
        if self.files.contains_key(&found.inode) {
            return;
        }
        let path = found.path;
        let asked = cx
            .analyzer
            .ask(found.inode, Wanted::Openssl, path, cx.waiter.clone());
        let Lookup::Ready(Answer::Openssl(points)) = asked else {
            return;
        };
        let state = match points {
            Ok(None) => FileState::NotTls,
            // Scripts, corrupt files: nothing to probe, nothing to report per file.
            Err(Refused::Unusable(_)) => FileState::NotTls,
            Err(r) => FileState::Refused(r),
            Ok(Some(points)) => {
                let target = OpensslTarget {
                    path: path.to_owned(),
                    points,
                };
                let mark = cx.loader.uprobes();
                match attach(cx.loader, &target) {
                    Ok(points) => {
                        let shown = std::fs::canonicalize(path).unwrap_or(path.to_owned());
                        tracing::info!(file = %shown.display(), points, "probing OpenSSL");
                        FileState::Attached { points }
                    }
                    Err(_) if std::fs::metadata(path).is_err() => {
                        // Reached through a process that exited mid-attach: the file lives
                        // on for the others that map it, so the next one tries again.
                        cx.loader.detach_uprobes_since(mark);
                        return;
                    }
                    Err(e) => {
                        cx.loader.detach_uprobes_since(mark);
                        cx.stats.add(Counter::AttachFailures, 1);
                        tracing::warn!(file = %path.display(), "cannot probe OpenSSL: {e:#}");
                        FileState::Failed(format!("{e:#}"))
                    }
                }
            }
        };
        self.files.insert(found.inode, state);
    }
}

/// Attaches entry and return probes to each OpenSSL function the target defines. A uprobe is
/// keyed by inode and offset, so this covers every process that maps the file.
pub fn attach(loader: &mut Loader, target: &OpensslTarget) -> anyhow::Result<usize> {
    let mut attached = 0;
    for point in &target.points {
        let entry = match point.symbol.as_str() {
            "SSL_read" => programs::SSL_READ,
            "SSL_write" => programs::SSL_WRITE,
            "SSL_read_ex" => programs::SSL_READ_EX,
            "SSL_write_ex" => programs::SSL_WRITE_EX,
            "SSL_free" => programs::SSL_FREE,
            _ => continue,
        };
        // The return probe goes first: an entry without its return would leave calls in
        // flight that never complete. SSL_free needs no return.
        let progs: &[&str] = if entry == programs::SSL_FREE {
            &[programs::SSL_FREE]
        } else {
            &[programs::SSL_RET, entry]
        };
        for &prog in progs {
            loader
                .uprobe(prog, point.file_offset, &target.path)
                .with_context(|| format!("probing {}", point.symbol))?;
        }
        attached += 1;
    }
    Ok(attached)
}
