//! `sightline symbols <path|pid>`: every attach point and struct offset with its source, as a
//! table for people or as JSON (schema in `symbolizer/SYMBOLS_JSON.md`) for scripts.

use sightline_symbolizer::{analyze, openssl_version, Analysis, Options};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

/// Files a target stands for: a path is itself; a pid is its executable and its libssl maps.
fn files_of(target: &str) -> Vec<PathBuf> {
    let Ok(pid) = target.parse::<u32>() else {
        return vec![PathBuf::from(target)];
    };
    let mut files = vec![PathBuf::from(format!("/proc/{pid}/exe"))];
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
            let name = path.rsplit('/').next().unwrap_or(path);
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if path.starts_with('/') && name.contains("ssl") && !files.contains(&p) {
                files.push(p);
            }
        }
    }
    files
}

pub fn run(target: &str, json: bool, opts: &Options) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for f in files_of(target) {
        let mut a = analyze(&f, opts)?;
        a.file = std::fs::canonicalize(&f)
            .unwrap_or(f.clone())
            .display()
            .to_string();
        if let Some(o) = a.openssl.as_mut() {
            o.version = openssl_version(&f);
        }
        reports.push(a);
    }
    let mut out = String::new();
    if json {
        out = serde_json::to_string_pretty(&reports)? + "\n";
    } else {
        for r in &reports {
            print_human(&mut out, r);
        }
    }
    // A reader such as `head` may close the pipe early; that is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(())
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn print_human(o: &mut String, r: &Analysis) {
    let _ = writeln!(o, "{}", r.file);
    let _ = writeln!(
        o,
        "  build-id: {}   arch: {}",
        r.build_id.as_deref().unwrap_or("none"),
        serde_json::to_value(r.arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "  symbol table: {}   DWARF: {}   debug file: {}",
        if r.has_symtab { "yes" } else { "no" },
        if r.has_dwarf { "yes" } else { "no" },
        r.debug_file.as_deref().unwrap_or("none")
    );
    match &r.openssl {
        None => {
            let _ = writeln!(o, "  OpenSSL: not present");
        }
        Some(ssl) => {
            let _ = writeln!(
                o,
                "  OpenSSL: {}",
                ssl.version
                    .as_deref()
                    .unwrap_or("present, version string not found")
            );
            let _ = writeln!(
                o,
                "    {:<14} {:>12} {:>12}  SOURCE",
                "SYMBOL", "ADDRESS", "FILE OFFSET"
            );
            for p in &ssl.functions {
                let _ = writeln!(
                    o,
                    "    {:<14} {:>12} {:>12}  {}",
                    p.symbol,
                    hex(p.address),
                    hex(p.file_offset),
                    p.source
                );
            }
            for m in &ssl.missing {
                let _ = writeln!(o, "    {m:<14} {:>12} {:>12}  not defined here", "-", "-");
            }
        }
    }
    let Some(g) = &r.go else {
        let _ = writeln!(o, "  Go: not a Go binary");
        return;
    };
    let _ = writeln!(
        o,
        "  Go: {}   pclntab: {} layout, {} functions",
        g.version.as_deref().unwrap_or("version unknown"),
        g.pclntab.as_deref().unwrap_or("none"),
        g.function_count
    );
    if let Some(b) = &g.build {
        if let Some(m) = &b.main_module {
            let _ = writeln!(o, "    main module: {} {}", m.path, m.version);
        }
        let settings: Vec<String> = b
            .settings
            .iter()
            .map(|s| format!("{}={}", s.key, s.value))
            .collect();
        if !settings.is_empty() {
            let _ = writeln!(o, "    build: {}", settings.join(" "));
        }
        for d in &b.deps {
            let _ = writeln!(o, "    dep: {} {}", d.path, d.version);
        }
    }
    for p in &g.problems {
        let _ = writeln!(o, "    problem: {p}");
    }
    let _ = writeln!(
        o,
        "    {:<52} {:>10} {:>10}  {:<8} RETURN OR CALL SITES (file offsets)",
        "FUNCTION", "ADDRESS", "FILE OFF", "SOURCE"
    );
    for f in &g.functions {
        let list = |sites: &[sightline_symbolizer::go::Site]| {
            sites
                .iter()
                .map(|s| hex(s.file_offset))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rets = match (&f.returns, &f.calls) {
            (Some(r), _) => list(r),
            (None, Some(c)) => format!("calls: {}", list(c)),
            (None, None) => "-".to_string(),
        };
        let _ = writeln!(
            o,
            "    {:<52} {:>10} {:>10}  {:<8} {}",
            f.symbol,
            hex(f.address),
            hex(f.file_offset),
            f.source,
            rets
        );
    }
    for m in &g.missing_functions {
        let _ = writeln!(o, "    {m:<52} {:>10} {:>10}  not in this binary", "-", "-");
    }
    let _ = writeln!(
        o,
        "    {:<44} {:>6}  {:<14} DETAIL",
        "STRUCT FIELD", "OFFSET", "SOURCE"
    );
    for f in &g.fields {
        let _ = writeln!(
            o,
            "    {:<44} {:>6}  {:<14} {}",
            format!("{}.{}", f.ty, f.field),
            f.offset.map_or("-".to_string(), |o| o.to_string()),
            f.source.as_str(),
            f.detail
        );
    }
}
