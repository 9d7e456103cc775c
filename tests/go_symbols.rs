//! The symbolizer on Go binaries, checked against ground truth it does not compute: `go version
//! -m` (build info), `go tool nm` on the unstripped twin (function addresses), `objdump -d` (RET
//! sites), `readelf -l` (file offsets), and the program's own `unsafe.Offsetof`/reflect output
//! (struct offsets). Every Go toolchain here, in four shapes each; then real Debian Go programs.

use serde_json::Value;
use sightline_e2e::gobuild::{self, Shape, SHAPES, TOOLCHAINS};
use sightline_e2e::procs::{require, sightline_bin};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn symbols(bin: &Path, extra: &[&str]) -> Value {
    let text = run(Command::new(sightline_bin())
        .arg("symbols")
        .arg(bin)
        .arg("--json")
        .args(extra));
    let v: Value = serde_json::from_str(&text).unwrap();
    v[0].clone()
}

/// `go tool nm`: name → address of text symbols.
fn nm(go: &Path, bin: &Path) -> HashMap<String, u64> {
    run(Command::new(go).args(["tool", "nm"]).arg(bin))
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            matches!(w.next()?, "T" | "t").then(|| (w.collect::<Vec<_>>().join(" "), addr))
        })
        .collect()
}

/// Addresses of `ret` instructions that `objdump -d` finds in `[start, end)`.
fn objdump_rets(bin: &Path, start: u64, end: u64) -> Vec<u64> {
    run(Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(bin))
    .lines()
    .filter_map(|l| {
        let (addr, rest) = l.trim().split_once(":\t")?;
        let mnemonic = rest.split_whitespace().next()?;
        (mnemonic == "ret" || mnemonic == "retq").then(|| u64::from_str_radix(addr, 16).ok())?
    })
    .collect()
}

/// LOAD segments from `readelf -lW`: (vaddr, file offset, file size).
fn segments(bin: &Path) -> Vec<(u64, u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    run(Command::new("readelf").arg("-lW").arg(bin))
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (hex(w[2]), hex(w[1]), hex(w[4]))
        })
        .collect()
}

fn file_offset(segs: &[(u64, u64, u64)], addr: u64) -> u64 {
    let (va, off, _) = segs
        .iter()
        .find(|(va, _, size)| addr >= *va && addr < va + size)
        .unwrap_or_else(|| panic!("{addr:#x} is in a LOAD segment"));
    addr - va + off
}

/// What `go version -m` says: version, main module path, deps, build settings.
struct GoVersionM {
    version: String,
    path: String,
    main: Option<String>,
    deps: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

fn go_version_m(go: &Path, bin: &Path) -> GoVersionM {
    let text = run(Command::new(go).args(["version", "-m"]).arg(bin));
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    let mut m = GoVersionM {
        version: first.rsplit(' ').next().unwrap().to_string(),
        path: String::new(),
        main: None,
        deps: Vec::new(),
        settings: Vec::new(),
    };
    for l in lines {
        let f: Vec<&str> = l.trim_start().split('\t').collect();
        match f[0] {
            "path" => m.path = f[1].to_string(),
            "mod" => m.main = Some(f[1].to_string()),
            "dep" => m.deps.push((f[1].to_string(), f[2].to_string())),
            "build" => {
                let (k, v) = f[1..]
                    .join("\t")
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .unwrap();
                m.settings.push((k, v));
            }
            _ => {}
        }
    }
    m
}

fn check_build_info(go: &Path, bin: &Path, g: &Value) {
    let want = go_version_m(go, bin);
    assert_eq!(g["version"], want.version.as_str(), "{}", bin.display());
    let b = &g["build"];
    assert_eq!(b["path"], want.path.as_str());
    assert_eq!(b["main_module"]["path"].as_str(), want.main.as_deref());
    let deps: Vec<(String, String)> = b["deps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().into(),
                d["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(deps, want.deps, "{}", bin.display());
    let settings: Vec<(String, String)> = b["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().into(),
                s["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    // `go version -m` quotes values with spaces; compare unquoted.
    let unq = |v: &str| v.trim_matches('"').to_string();
    let want_settings: Vec<(String, String)> = want
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), unq(v)))
        .collect();
    let got: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.clone(), unq(v))).collect();
    assert_eq!(got, want_settings, "{}", bin.display());
}

/// Functions: the address of every probed function equals `go tool nm` on the twin, every RET
/// site equals objdump's, and every file offset follows readelf's segments.
fn check_functions(go: &Path, bin: &Path, twin: &Path, g: &Value) -> usize {
    let syms = nm(go, twin);
    let segs = segments(bin);
    let funcs = g["functions"].as_array().unwrap();
    assert!(!funcs.is_empty(), "{}: no functions", bin.display());
    let mut rets = 0;
    for f in funcs {
        let name = f["symbol"].as_str().unwrap();
        let addr = f["address"].as_u64().unwrap();
        assert_eq!(Some(&addr), syms.get(name), "{name} in {}", bin.display());
        assert_eq!(f["source"], "pclntab");
        assert_eq!(
            f["file_offset"].as_u64().unwrap(),
            file_offset(&segs, addr),
            "{name}"
        );
        if let Some(sites) = f["returns"].as_array() {
            let got: Vec<u64> = sites
                .iter()
                .map(|s| s["address"].as_u64().unwrap())
                .collect();
            let want = objdump_rets(twin, addr, f["end"].as_u64().unwrap());
            assert_eq!(got, want, "RET sites of {name} in {}", bin.display());
            assert!(!got.is_empty(), "{name} returns somewhere");
            for s in sites {
                let a = s["address"].as_u64().unwrap();
                assert_eq!(s["file_offset"].as_u64().unwrap(), file_offset(&segs, a));
            }
            rets += got.len();
        }
    }
    for m in g["missing_functions"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        assert!(
            !syms.contains_key(m),
            "{m} exists in {} but was reported missing",
            twin.display()
        );
    }
    rets
}

/// The program's own view of its struct layout.
fn program_offsets(bin: &Path) -> Vec<(String, String, u64)> {
    run(Command::new(bin).arg("-offsets"))
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (w[0].to_string(), w[1].to_string(), w[2].parse().unwrap())
        })
        .collect()
}

fn field<'a>(g: &'a Value, ty: &str, name: &str) -> &'a Value {
    g["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == ty && f["field"] == name)
        .unwrap_or_else(|| panic!("{ty}.{name} is reported"))
}

fn check_toolchain(version: &str) {
    require("objdump");
    require("readelf");
    let go = gobuild::go(version);
    for shape in SHAPES {
        let bin = gobuild::build("probe", version, shape, false);
        let twin = gobuild::twin("probe", version, shape);
        let r = symbols(&bin, &[]);
        let g = &r["go"];
        assert!(g.is_object(), "{} is recognised as Go", bin.display());
        check_build_info(&go, &bin, g);
        let buildid = run(Command::new(&go).args(["tool", "buildid"]).arg(&bin));
        assert_eq!(r["go_build_id"], buildid.trim(), "{}", bin.display());
        let rets = check_functions(&go, &bin, &twin, g);
        assert!(rets > 0);
        let truth = program_offsets(&bin);
        assert!(truth.len() >= 40, "the program prints its offsets");
        let stripped = matches!(shape, Shape::Stripped | Shape::StrippedPie);
        for (ty, name, off) in &truth {
            let f = field(g, ty, name);
            assert_eq!(
                f["offset"].as_u64(),
                Some(*off),
                "{ty}.{name} in {}: {f}",
                bin.display()
            );
            let want_source = if stripped { "table" } else { "dwarf" };
            assert_eq!(f["source"], want_source, "{ty}.{name} in {}", bin.display());
            if stripped {
                // The row names the toolchain that produced it: the same minor release.
                let d = f["detail"].as_str().unwrap();
                assert!(d.contains(&format!("go{version}")), "{d}");
            }
        }
        // No field a probe needs is left unknown on a toolchain the table covers.
        for f in g["fields"].as_array().unwrap() {
            assert_ne!(f["source"], "unknown", "{} in {}", f, bin.display());
        }
        if stripped {
            // Without DWARF and table, the machine code alone gives these, and says so for the rest.
            let d = symbols(&bin, &["--offset-sources", "disassembly"]);
            let dg = &d["go"];
            let derived = [
                ("runtime.g", "goid"),
                ("crypto/tls.Conn", "conn"),
                ("net.conn", "fd"),
                ("net.netFD", "laddr"),
                ("net.netFD", "raddr"),
            ];
            for (ty, name) in derived {
                let f = field(dg, ty, name);
                let want = truth.iter().find(|t| t.0 == ty && t.1 == name).unwrap().2;
                assert_eq!(f["source"], "disassembly", "{ty}.{name}: {f}");
                assert_eq!(
                    f["offset"].as_u64(),
                    Some(want),
                    "{ty}.{name} by disassembly"
                );
            }
            let u = field(dg, "net/http.Request", "Method");
            assert_eq!(u["source"], "unknown");
            assert!(u["offset"].is_null());
            let why = u["detail"].as_str().unwrap();
            assert!(
                why.contains("no DWARF") || why.contains("not consulted"),
                "{why}"
            );
            assert!(why.contains("no disassembly rule"), "{why}");
        }
    }
}

#[test]
fn go_1_19_in_four_shapes() {
    check_toolchain(TOOLCHAINS[0]);
}

#[test]
fn go_1_21_in_four_shapes() {
    check_toolchain(TOOLCHAINS[1]);
}

#[test]
fn go_1_22_in_four_shapes() {
    check_toolchain(TOOLCHAINS[2]);
}

#[test]
fn go_1_23_in_four_shapes() {
    check_toolchain(TOOLCHAINS[3]);
}

/// Go's own pclntab reader (tests/go/pcln): function count, and entry/end of the named ones.
fn gosym(bin: &Path, names: &[&str]) -> (usize, HashMap<String, (u64, u64)>) {
    let tool = gobuild::build("pcln", "1.23", Shape::Plain, false);
    let text = run(Command::new(tool).arg(bin).args(names));
    let mut lines = text.lines();
    let count = lines
        .next()
        .and_then(|l| l.strip_prefix("count "))
        .unwrap()
        .parse()
        .unwrap();
    let funcs = lines
        .map(|l| {
            let w: Vec<&str> = l.rsplitn(3, ' ').collect();
            (
                w[2].to_string(),
                (w[1].parse().unwrap(), w[0].parse().unwrap()),
            )
        })
        .collect();
    (count, funcs)
}

const DEBIAN_GO_PROGRAMS: [&str; 3] = [
    "usr/bin/prometheus-node-exporter",
    "usr/bin/caddy",
    "usr/sbin/dockerd",
];

/// Real Go programs as Debian ships them (stripped, built by Debian's Go): build info matches
/// `go version -m`, every function and the function count match Go's own pclntab reader, RET
/// sites match objdump, and struct offsets match what a program built by the same Go release
/// prints about itself.
#[test]
fn debian_go_programs() {
    let root = Path::new("/var/cache/sightline-tests/debs/root");
    for rel in DEBIAN_GO_PROGRAMS {
        let bin = root.join(rel);
        assert!(
            bin.is_file(),
            "{} is missing: run tests/prereqs.sh",
            bin.display()
        );
        let r = symbols(&bin, &[]);
        let g = &r["go"];
        let go = gobuild::go("1.23");
        check_build_info(&go, &bin, g);
        let funcs = g["functions"].as_array().unwrap();
        let names: Vec<&str> = funcs
            .iter()
            .chain(g["missing_functions"].as_array().unwrap())
            .map(|f| f.get("symbol").unwrap_or(f).as_str().unwrap())
            .collect();
        let (count, truth) = gosym(&bin, &names);
        assert_eq!(
            g["function_count"].as_u64().unwrap() as usize,
            count,
            "{rel}"
        );
        let segs = segments(&bin);
        for f in funcs {
            let name = f["symbol"].as_str().unwrap();
            let (entry, end) = truth[name];
            assert_eq!(f["address"].as_u64().unwrap(), entry, "{name} in {rel}");
            assert_eq!(f["end"].as_u64().unwrap(), end, "{name} in {rel}");
            assert_eq!(
                f["file_offset"].as_u64().unwrap(),
                file_offset(&segs, entry)
            );
            if let Some(sites) = f["returns"].as_array() {
                let got: Vec<u64> = sites
                    .iter()
                    .map(|s| s["address"].as_u64().unwrap())
                    .collect();
                assert_eq!(
                    got,
                    objdump_rets(&bin, entry, end),
                    "RET sites of {name} in {rel}"
                );
            }
        }
        for m in g["missing_functions"].as_array().unwrap() {
            assert!(
                !truth.contains_key(m.as_str().unwrap()),
                "{m} exists in {rel}"
            );
        }
        // Offsets: the binary has no DWARF, so the table answers; a program built by the same Go
        // release states the truth about its own (standard library) types.
        let minor = g["version"].as_str().unwrap().trim_start_matches("go");
        let minor: Vec<&str> = minor.split('.').take(2).collect();
        let probe = gobuild::build("probe", &minor.join("."), Shape::Plain, false);
        let disasm = symbols(&bin, &["--offset-sources", "disassembly"]);
        for (ty, name, off) in program_offsets(&probe) {
            let f = field(g, &ty, &name);
            if f["source"] == "not_applicable" {
                continue;
            }
            assert_eq!(f["source"], "table", "{ty}.{name} in {rel}");
            assert_eq!(f["offset"].as_u64(), Some(off), "{ty}.{name} in {rel}");
            let d = field(&disasm["go"], &ty, &name);
            if d["source"] == "disassembly" {
                assert_eq!(
                    d["offset"].as_u64(),
                    Some(off),
                    "{ty}.{name} by disassembly in {rel}"
                );
            }
        }
        assert_eq!(
            field(&disasm["go"], "runtime.g", "goid")["source"],
            "disassembly",
            "{rel}"
        );
    }
}

/// The committed table is what the generator produces from the toolchains here: nobody edited
/// it by hand, and no toolchain update changed a layout unnoticed.
#[test]
fn offsets_table_matches_the_toolchains_here() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("offsets-{}.tsv", std::process::id()));
    run(Command::new(root.join("symbolizer/offsets/generate.sh")).arg(&out));
    let fresh = std::fs::read_to_string(&out).unwrap();
    let committed =
        std::fs::read_to_string(root.join("symbolizer/src/go/offsets_table.tsv")).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(
        fresh, committed,
        "run symbolizer/offsets/generate.sh and commit the table"
    );
    for v in TOOLCHAINS {
        assert!(
            committed
                .lines()
                .any(|l| l.starts_with(&format!("go{v}\t"))),
            "go{v} rows"
        );
    }
}

/// A binary stripped of DWARF whose debug file is installed separately (found through
/// `.gnu_debuglink` and its CRC, then through the build-id tree) is as well described as the
/// unstripped one.
#[test]
fn separate_debug_files_are_used() {
    require("objcopy");
    let plain = gobuild::build("probe", "1.23", Shape::Cgo, false);
    let dir = std::env::temp_dir().join(format!("debuglink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let debug = dir.join("probe.debug");
    let stripped = dir.join("probe");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&plain)
        .arg(&debug));
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&plain)
        .arg(&stripped));
    let truth = program_offsets(&plain);
    let by_link = symbols(&stripped, &["--offset-sources", "dwarf"]);
    assert_eq!(by_link["debug_file"], debug.display().to_string().as_str());
    assert_eq!(by_link["has_dwarf"], true);
    for (ty, name, off) in &truth {
        let f = field(&by_link["go"], ty, name);
        assert_eq!(f["source"], "dwarf", "{ty}.{name}: {f}");
        assert_eq!(f["offset"].as_u64(), Some(*off), "{ty}.{name}");
        assert_eq!(f["detail"], "DWARF of the separate debug file");
    }
    // A debug file whose CRC does not match is not used.
    std::fs::write(&debug, b"not the debug file").unwrap();
    let stale = symbols(&stripped, &[]);
    assert!(stale["debug_file"].is_null());

    // The build-id tree: <root>/.build-id/ab/cdef….debug.
    let id = r_build_id(&plain);
    let tree = dir.join("root/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&tree).unwrap();
    let by_id = tree.join(format!("{}.debug", &id[2..]));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&plain)
        .arg(&by_id));
    let bare = dir.join("probe-bare");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(&plain)
        .arg(&bare));
    let r = symbols(
        &bare,
        &[
            "--debug-root",
            dir.join("root").to_str().unwrap(),
            "--offset-sources",
            "dwarf",
        ],
    );
    assert_eq!(r["debug_file"], by_id.display().to_string().as_str());
    let f = field(&r["go"], "net/http.Request", "ctx");
    let want = truth
        .iter()
        .find(|t| t.0 == "net/http.Request" && t.1 == "ctx")
        .unwrap()
        .2;
    assert_eq!(f["offset"].as_u64(), Some(want));
    let _ = std::fs::remove_dir_all(&dir);
}

fn r_build_id(bin: &Path) -> String {
    run(Command::new("readelf").arg("-n").arg(bin))
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("an externally linked binary carries a GNU build-id")
}

/// A running process is analysed through /proc/<pid>/exe, with the same answer as its file.
#[test]
fn a_running_go_process_by_pid() {
    let bin = gobuild::build("probe", "1.22", Shape::StrippedPie, false);
    let mut child = Command::new(&bin)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it serves, so its maps are complete.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let by_pid = symbols(Path::new(&child.id().to_string()), &[]);
    let by_path = symbols(&bin, &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        by_pid["file"],
        std::fs::canonicalize(&bin).unwrap().to_str().unwrap()
    );
    assert_eq!(by_pid["go"]["functions"], by_path["go"]["functions"]);
    assert_eq!(by_pid["go"]["fields"], by_path["go"]["fields"]);
    assert!(by_pid["go"]["version"]
        .as_str()
        .unwrap()
        .starts_with("go1.22."));
}

/// A Go release nobody has tabled (simulated by rewriting the version in a stripped binary's
/// build information to go1.99.0): DWARF is absent and the table has no row, so the fields the
/// machine code shows come from disassembly and every other field says why it is unknown.
#[test]
fn an_untabled_go_release_falls_back_to_disassembly_and_explains_the_rest() {
    let bin = gobuild::build("probe", "1.23", Shape::Stripped, false);
    let mut data = std::fs::read(&bin).unwrap();
    let truth = program_offsets(&bin);
    let real = symbols(&bin, &[]);
    let version = real["go"]["version"].as_str().unwrap().to_string();
    let fake = format!("go1.99.{}", "0".repeat(version.len() - "go1.99.".len()));
    assert_eq!(fake.len(), version.len());
    // Patch only the build information blob (it starts with its magic), not other copies.
    let magic = b"\xff Go buildinf:";
    let start = data.windows(magic.len()).position(|w| w == magic).unwrap();
    let at = start
        + data[start..]
            .windows(version.len())
            .position(|w| w == version.as_bytes())
            .unwrap();
    data[at..at + fake.len()].copy_from_slice(fake.as_bytes());
    let patched = std::env::temp_dir().join(format!("go199-{}", std::process::id()));
    std::fs::write(&patched, &data).unwrap();
    let r = symbols(&patched, &[]);
    let _ = std::fs::remove_file(&patched);
    let g = &r["go"];
    assert_eq!(g["version"], fake.as_str());
    for (ty, name) in [
        ("runtime.g", "goid"),
        ("net.netFD", "laddr"),
        ("crypto/tls.Conn", "conn"),
    ] {
        let f = field(g, ty, name);
        let want = truth.iter().find(|t| t.0 == ty && t.1 == name).unwrap().2;
        assert_eq!(f["source"], "disassembly", "{f}");
        assert_eq!(f["offset"].as_u64(), Some(want));
    }
    let f = field(g, "net/http.Request", "URL");
    assert_eq!(f["source"], "unknown");
    let why = f["detail"].as_str().unwrap();
    assert!(why.contains("no DWARF"), "{why}");
    assert!(why.contains("no table row for go1.99"), "{why}");
    assert!(
        why.contains("go1.23"),
        "the reason lists what the table covers: {why}"
    );
    // The functions and their return sites do not depend on the version at all.
    assert_eq!(g["functions"], real["go"]["functions"]);
}

/// The human form is the JSON's content as a table: the same functions, addresses, offsets
/// and sources.
#[test]
fn the_table_form_shows_what_the_json_says() {
    let bin = gobuild::build("probe", "1.23", Shape::Stripped, false);
    let j = symbols(&bin, &[]);
    let text = run(Command::new(sightline_bin()).arg("symbols").arg(&bin));
    let g = &j["go"];
    assert!(
        text.contains(&format!("Go: {}", g["version"].as_str().unwrap())),
        "{text}"
    );
    for f in g["functions"].as_array().unwrap() {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == f["symbol"].as_str())
            .unwrap_or_else(|| panic!("a row for {f}: {text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], format!("{:#x}", f["address"].as_u64().unwrap()));
        assert_eq!(
            cols[2],
            format!("{:#x}", f["file_offset"].as_u64().unwrap())
        );
        assert_eq!(cols[3], "pclntab");
    }
    let url = field(g, "net/http.Request", "URL");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("net/http.Request.URL "))
        .expect("a row for Request.URL");
    assert!(
        row.contains(&format!(" {} ", url["offset"].as_u64().unwrap())),
        "{row}"
    );
    assert!(row.contains("table"), "{row}");
    assert!(row.contains(url["detail"].as_str().unwrap()), "{row}");
}
