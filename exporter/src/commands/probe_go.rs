//! `sightline probe-go <executable>`: the Go probes (or empty ones in their place) on one
//! executable, outside the pipeline. The Go overhead benchmark uses it for its empty-probe
//! floor and hits per request; the safety test uses it to attach and detach in a loop while
//! a server is under load.

use crate::capture::kernel::preflight;
use crate::capture::loader::Loader;
use crate::sources::go::attach::attach;
use crate::sources::go::offsets::go_offsets;
use anyhow::Context;
use sightline_common::{counter, programs, DEFAULT_CAPTURE};
use sightline_symbolizer::{analyze, Options};
use std::path::Path;
use std::time::Duration;

pub fn run(
    target: &Path,
    empty: bool,
    cycles: Option<u32>,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    preflight()?;
    let a = analyze(target, &Options::default())?;
    let go =
        a.go.with_context(|| format!("{} is not a Go executable", target.display()))?;
    let (mut loader, _channels) = Loader::load(DEFAULT_CAPTURE, false)?;
    if let Some(pid) = pid {
        let offsets = go_offsets(&go).map_err(anyhow::Error::msg)?;
        loader.set_go_process(pid, &offsets)?;
    }
    let instead = empty.then_some(programs::GO_EMPTY);
    // The real probes include the ones that write a traceparent, where the kernel allows.
    let writes = !empty && loader.enable_memory_writes().is_ok();
    if let Some(n) = cycles {
        for _ in 0..n {
            attach(&mut loader, target, &go, instead)?;
            std::thread::sleep(Duration::from_millis(20));
            loader.detach_all();
        }
        println!("cycles {n}");
        if writes {
            let k = loader.counters();
            println!(
                "written {} skipped {}",
                k[counter::WRITTEN_IN_PROCESS as usize],
                k[counter::WRITE_SKIPPED as usize]
            );
        }
        return Ok(());
    }
    let probed = attach(&mut loader, target, &go, instead)?;
    println!("attached {}", probed.join(" "));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })?;
    let hits = loader.counters()[counter::EMPTY_PROBE_HITS as usize];
    println!("hits {hits}");
    Ok(())
}
