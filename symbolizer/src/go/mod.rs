//! Go binaries: build information, functions from the pclntab, return sites, and the struct
//! offsets the Go probes need, each with where it came from.

pub mod buildinfo;
pub mod disasm;
pub mod pclntab;
pub mod table;

use crate::dwarf;
use crate::image::{Arch, Image};
use crate::rets::{call_sites, return_sites};
use buildinfo::BuildInfo;
use object::ReadRef;
use pclntab::Pclntab;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A function the Go probes attach to, whether they need its return sites, and the callee
/// whose call sites inside it they need.
pub struct GoProbe {
    pub symbol: &'static str,
    pub returns: bool,
    pub calls: Option<&'static str>,
}

const fn probe(symbol: &'static str, returns: bool) -> GoProbe {
    GoProbe {
        symbol,
        returns,
        calls: None,
    }
}

/// A function probed where it calls `callee`: the moment between two steps of its body.
const fn probe_calls(symbol: &'static str, callee: &'static str) -> GoProbe {
    GoProbe {
        symbol,
        returns: false,
        calls: Some(callee),
    }
}

pub const GO_FUNCTIONS: &[GoProbe] = &[
    probe("net/http.serverHandler.ServeHTTP", true),
    probe("net/http.(*Transport).RoundTrip", true),
    // RoundTrip is small enough to be inlined where callers hold a *Transport (caddy's proxy),
    // so its body is probed too.
    probe("net/http.(*Transport).roundTrip", true),
    probe("net/http.(*persistConn).roundTrip", false),
    // Writes a client request's framing headers, right after its request line, Host and
    // User-Agent went into the connection's buffer: where a traceparent line can join them.
    probe("net/http.(*transferWriter).writeHeader", false),
    probe("net/http.(*http2serverConn).processHeaders", false),
    probe("net/http.(*http2serverConn).runHandler", true),
    probe("net/http.(*http2ClientConn).RoundTrip", true),
    // Go 1.23 moved the body here and inlines RoundTrip into its caller.
    probe("net/http.(*http2ClientConn).roundTrip", false),
    probe("net/http.(*http2Framer).WriteHeaders", false),
    // Its flush sends a request's HEADERS frame, which is still in the buffer just before.
    probe_calls(
        "net/http.(*http2ClientConn).writeHeaders",
        "bufio.(*Writer).Flush",
    ),
    probe("golang.org/x/net/http2.(*serverConn).processHeaders", false),
    probe("golang.org/x/net/http2.(*serverConn).runHandler", true),
    probe("golang.org/x/net/http2.(*ClientConn).RoundTrip", true),
    probe("golang.org/x/net/http2.(*Framer).WriteHeaders", false),
    probe("crypto/tls.(*Conn).Read", true),
    probe("crypto/tls.(*Conn).Write", true),
    probe("runtime.newproc1", true),
    probe("runtime.goexit1", false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub ty: &'static str,
    pub field: &'static str,
    /// First Go release with the field.
    pub since: Option<(u32, u32)>,
}

impl FieldSpec {
    /// The Go package that defines the type.
    pub fn package(&self) -> &'static str {
        self.ty.rsplit_once('.').map_or(self.ty, |(p, _)| p)
    }

    /// The module whose version decides the layout: x/net ships apart from the toolchain.
    fn module(&self) -> Option<&'static str> {
        self.ty
            .starts_with("golang.org/x/net/")
            .then_some("golang.org/x/net")
    }
}

/// The fields the Go probes read, from `fields.txt` (shared with the offsets generator).
pub fn field_specs() -> &'static [FieldSpec] {
    static SPECS: OnceLock<Vec<FieldSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        include_str!("fields.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some(FieldSpec {
                    ty: w.next()?,
                    field: w.next()?,
                    since: w.next().and_then(buildinfo::parse_go_version),
                })
            })
            .collect()
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub address: u64,
    pub file_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoFunction {
    pub symbol: String,
    pub address: u64,
    pub file_offset: u64,
    pub end: u64,
    pub source: &'static str,
    /// Return instructions, for probes that need the function's exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returns: Option<Vec<Site>>,
    /// Call instructions to the probe's callee, for probes placed at those calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<Site>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetSource {
    Dwarf,
    Table,
    Disassembly,
    /// The field does not exist in this binary (its type is not linked in, or the Go release
    /// predates it); no probe needs it.
    NotApplicable,
    Unknown,
}

impl std::str::FromStr for OffsetSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dwarf" => Ok(OffsetSource::Dwarf),
            "table" => Ok(OffsetSource::Table),
            "disassembly" => Ok(OffsetSource::Disassembly),
            other => Err(format!(
                "unknown offset source {other:?}; use dwarf, table or disassembly"
            )),
        }
    }
}

impl OffsetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetSource::Dwarf => "dwarf",
            OffsetSource::Table => "table",
            OffsetSource::Disassembly => "disassembly",
            OffsetSource::NotApplicable => "not applicable",
            OffsetSource::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldOffset {
    #[serde(rename = "type")]
    pub ty: String,
    pub field: String,
    pub offset: Option<u64>,
    pub source: OffsetSource,
    /// Which table row, function or file gave the answer, or why there is none.
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GoInfo {
    pub version: Option<String>,
    pub build: Option<BuildInfo>,
    /// The pclntab layout (`go1.16`, `go1.18`, `go1.20`).
    pub pclntab: Option<String>,
    pub text_start: Option<u64>,
    pub function_count: usize,
    pub functions: Vec<GoFunction>,
    pub missing_functions: Vec<String>,
    pub fields: Vec<FieldOffset>,
    /// Parts that could not be read, with the reason.
    pub problems: Vec<String>,
}

impl GoInfo {
    pub fn field(&self, ty: &str, field: &str) -> Option<&FieldOffset> {
        self.fields.iter().find(|f| f.ty == ty && f.field == field)
    }

    pub fn function(&self, symbol: &str) -> Option<&GoFunction> {
        self.functions.iter().find(|f| f.symbol == symbol)
    }
}

/// Everything about a Go binary, or `None` when it is not one. `debug` is a separate debug file
/// (by build-id or debuglink), searched for DWARF when the binary has none.
pub fn analyze<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
    debug: Option<&Image<'d, R>>,
    sources: &[OffsetSource],
) -> Option<GoInfo> {
    let mut info = GoInfo::default();
    match find_buildinfo(img) {
        Some(Ok(b)) => {
            info.version = Some(b.go_version.clone());
            info.build = Some(b);
        }
        Some(Err(e)) => info.problems.push(format!("build information: {e}")),
        None => {}
    }
    let table = find_pclntab(img, info.build.is_some());
    if info.build.is_none() && table.is_none() {
        return None;
    }
    let Some((tab_addr, tab_data)) = table else {
        info.problems
            .push("no pclntab found: functions cannot be located".into());
        info.fields = resolve_fields(img, debug, &info, &HashMap::new(), &[], sources);
        return Some(info);
    };
    let parsed = text_start(img, tab_addr, tab_data)
        .and_then(|ts| Pclntab::parse(tab_data, Some(ts)).map_err(|e| format!("pclntab: {e}")));
    let tab = match parsed {
        Ok(t) => t,
        Err(e) => {
            info.problems.push(e);
            info.fields = resolve_fields(img, debug, &info, &HashMap::new(), &[], sources);
            return Some(info);
        }
    };
    info.pclntab = Some(tab.version.to_string());
    info.text_start = Some(tab.text_start());
    info.function_count = tab.len();

    // One pass over every function: the probe targets, the rule functions, and which packages
    // are linked in at all.
    let mut wanted: HashMap<&str, Option<(u64, u64)>> = GO_FUNCTIONS
        .iter()
        .map(|p| p.symbol)
        .chain(GO_FUNCTIONS.iter().filter_map(|p| p.calls))
        .chain(disasm::CHAIN_RULES.iter().map(|r| r.function))
        .chain([disasm::GOID_FUNCTION])
        .map(|s| (s, None))
        .collect();
    let packages: Vec<&str> = {
        let mut p: Vec<&str> = field_specs().iter().map(FieldSpec::package).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let mut linked = vec![false; packages.len()];
    for f in tab.funcs() {
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                info.problems.push(format!("pclntab: {e}"));
                break;
            }
        };
        if let Some(slot) = wanted.get_mut(f.name) {
            slot.get_or_insert((f.entry, f.end));
        }
        for (i, p) in packages.iter().enumerate() {
            if !linked[i]
                && f.name.len() > p.len()
                && f.name.starts_with(p)
                && f.name.as_bytes()[p.len()] == b'.'
            {
                linked[i] = true;
            }
        }
    }
    let code = |range: (u64, u64)| img.read_at(range.0, range.1.saturating_sub(range.0));
    for p in GO_FUNCTIONS {
        let Some(range) = wanted.get(p.symbol).copied().flatten() else {
            info.missing_functions.push(p.symbol.to_string());
            continue;
        };
        let Some(file_offset) = img.addr_to_offset(range.0) else {
            info.problems.push(format!(
                "{}: address {:#x} lies in no segment",
                p.symbol, range.0
            ));
            continue;
        };
        let sites = |addrs: Vec<u64>| -> Vec<Site> {
            addrs
                .into_iter()
                .filter_map(|a| {
                    Some(Site {
                        address: a,
                        file_offset: img.addr_to_offset(a)?,
                    })
                })
                .collect()
        };
        let returns = if p.returns {
            match code(range).and_then(|c| return_sites(img.arch(), c, range.0)) {
                Some(addrs) => Some(sites(addrs)),
                None => {
                    info.problems.push(format!(
                        "{}: return sites unknown (code unreadable or architecture without a decoder)",
                        p.symbol
                    ));
                    None
                }
            }
        } else {
            None
        };
        let calls = match p.calls {
            None => None,
            Some(callee) => {
                let target = wanted.get(callee).copied().flatten().map(|r| r.0);
                match target.and_then(|t| Some((t, code(range)?))) {
                    Some((t, c)) => call_sites(img.arch(), c, range.0, t).map(sites),
                    None => None,
                }
                .filter(|s| !s.is_empty())
                .or_else(|| {
                    info.problems.push(format!(
                        "{}: no call to {callee} found in it (inlined, or code unreadable)",
                        p.symbol
                    ));
                    None
                })
            }
        };
        info.functions.push(GoFunction {
            symbol: p.symbol.to_string(),
            address: range.0,
            file_offset,
            end: range.1,
            source: "pclntab",
            returns,
            calls,
        });
    }

    // Offsets the machine code shows, used only when DWARF and the table have no answer.
    let mut derived: Vec<Derived<'_>> = Vec::new();
    if img.arch() == Arch::X86_64 {
        for rule in disasm::CHAIN_RULES {
            let Some(c) = wanted.get(rule.function).copied().flatten().and_then(code) else {
                continue;
            };
            let entry = wanted[rule.function].map_or(0, |r| r.0);
            for (f, off) in rule
                .fields
                .iter()
                .zip(disasm::chain_offsets(c, entry, rule))
            {
                if let Some(off) = off {
                    derived.push((*f, (off, rule.function)));
                }
            }
        }
        if let Some(range) = wanted.get(disasm::GOID_FUNCTION).copied().flatten() {
            if let Some(off) = code(range).and_then(|c| disasm::goid_offset(c, range.0)) {
                derived.push((("runtime.g", "goid"), (off, disasm::GOID_FUNCTION)));
            }
        }
    }
    let linked: HashMap<&str, bool> = packages.into_iter().zip(linked).collect();
    info.fields = resolve_fields(img, debug, &info, &linked, &derived, sources);
    Some(info)
}

type Derived<'a> = ((&'a str, &'a str), (u64, &'a str));

/// DWARF first, then the table, then disassembly; otherwise "unknown" with the reason.
fn resolve_fields<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
    debug: Option<&Image<'d, R>>,
    info: &GoInfo,
    linked: &HashMap<&str, bool>,
    derived: &[Derived<'_>],
    sources: &[OffsetSource],
) -> Vec<FieldOffset> {
    let use_dwarf = sources.contains(&OffsetSource::Dwarf);
    let use_table = sources.contains(&OffsetSource::Table);
    let use_disasm = sources.contains(&OffsetSource::Disassembly);
    let specs = field_specs();
    let pairs: Vec<(&str, &str)> = specs.iter().map(|s| (s.ty, s.field)).collect();
    let found = if use_dwarf {
        dwarf_offsets(debug.unwrap_or(img), &pairs)
            .or_else(|| debug.and_then(|_| dwarf_offsets(img, &pairs)))
    } else {
        None
    };
    let (dwarf, dwarf_note) = match found {
        Some(Ok(m)) => (Some(m), None),
        Some(Err(e)) => (None, Some(format!("DWARF unreadable: {e}"))),
        None => (None, None),
    };
    let minor = info.build.as_ref().and_then(BuildInfo::go_minor);
    let xnet = info
        .build
        .as_ref()
        .and_then(|b| b.dep("golang.org/x/net"))
        .map(|m| m.replaced_by.as_deref().unwrap_or(m).version.clone());
    specs
        .iter()
        .map(|s| {
            let mut out = FieldOffset {
                ty: s.ty.to_string(),
                field: s.field.to_string(),
                offset: None,
                source: OffsetSource::Unknown,
                detail: String::new(),
            };
            if let (Some(since), Some(have)) = (s.since, minor) {
                if have < since {
                    out.source = OffsetSource::NotApplicable;
                    out.detail = format!("added in go{}.{}", since.0, since.1);
                    return out;
                }
            }
            // A binary built outside module mode (GOPATH, or a vendor tree without
            // modules.txt) lists no modules yet may link x/net: its code is the evidence.
            if s.module().is_some()
                && info.build.is_some()
                && xnet.is_none()
                && linked.get(s.package()) != Some(&true)
            {
                out.source = OffsetSource::NotApplicable;
                out.detail = "this binary does not use golang.org/x/net".into();
                return out;
            }
            if linked.get(s.package()) == Some(&false) {
                out.source = OffsetSource::NotApplicable;
                out.detail = format!("package {} is not linked in", s.package());
                return out;
            }
            if dwarf.as_ref().is_some_and(|m| !m.types.contains(s.ty)) {
                out.source = OffsetSource::NotApplicable;
                out.detail = "type not in DWARF: the linker dropped it as unused".into();
                return out;
            }
            if let Some(off) = dwarf
                .as_ref()
                .and_then(|m| m.offsets.get(&(s.ty.to_string(), s.field.to_string())))
            {
                out.offset = Some(*off);
                out.source = OffsetSource::Dwarf;
                out.detail = if debug.is_some() {
                    "DWARF of the separate debug file".into()
                } else {
                    "DWARF".into()
                };
                return out;
            }
            let key = match (s.module(), &xnet, minor) {
                (Some(m), Some(v), _) => Some(format!("{m}@{v}")),
                (None, _, Some((a, b))) => Some(format!("go{a}.{b}")),
                _ => None,
            };
            let hit = key
                .as_deref()
                .filter(|_| use_table)
                .and_then(|k| table::lookup(k, s.ty, s.field));
            if let Some(hit) = hit {
                out.offset = Some(hit.offset);
                out.source = OffsetSource::Table;
                out.detail = format!(
                    "table row {} (produced by {})",
                    key.unwrap_or_default(),
                    hit.produced_by
                );
                return out;
            }
            let by_code = derived
                .iter()
                .filter(|_| use_disasm)
                .find(|(k, _)| *k == (s.ty, s.field));
            if let Some((_, (off, func))) = by_code {
                out.offset = Some(*off);
                out.source = OffsetSource::Disassembly;
                out.detail = format!("read by {func}");
                return out;
            }
            let mut why = Vec::new();
            why.push(dwarf_note.clone().unwrap_or_else(|| {
                if dwarf.is_some() {
                    "not in DWARF".into()
                } else {
                    "no DWARF".into()
                }
            }));
            why.push(match key {
                Some(k) => format!(
                    "no table row for {k} (the table covers {})",
                    table::keys().join(", ")
                ),
                None if s.module().is_some() => format!(
                    "{} is linked in but its version is not recorded (built outside module mode), so no table row applies",
                    s.module().unwrap_or_default()
                ),
                None => "version unknown, so no table row applies".into(),
            });
            why.push("no disassembly rule matched".into());
            out.detail = why.join("; ");
            out
        })
        .collect()
}

fn dwarf_offsets<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
    pairs: &[(&str, &str)],
) -> Option<Result<dwarf::Members, String>> {
    let mut sections: HashMap<gimli::SectionId, Cow<'d, [u8]>> = HashMap::new();
    for id in dwarf::NEEDED {
        match img.debug_section(id.name()) {
            Ok(Some(d)) => {
                sections.insert(id, d);
            }
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
    }
    if !sections.contains_key(&gimli::SectionId::DebugInfo) {
        return None;
    }
    Some(dwarf::member_offsets(&sections, pairs).map_err(|e| e.to_string()))
}

/// The build information blob: the section, or a 16-byte aligned magic in a data segment.
fn find_buildinfo<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
) -> Option<Result<BuildInfo, buildinfo::BuildInfoError>> {
    if let Some((_, blob)) = img.section(&[".go.buildinfo"]) {
        return Some(buildinfo::parse(blob, img));
    }
    // Every Go toolchain since 1.13 names the section; searching the data is only for files
    // whose section headers are gone, not for every other binary discovery looks at.
    if img.has_section_headers() {
        return None;
    }
    for (_, data) in img.data_segments() {
        let magic = b"\xff Go buildinf:";
        for at in memchr::memmem::find_iter(data, magic) {
            if at % 16 == 0 {
                return Some(buildinfo::parse(&data[at..], img));
            }
        }
    }
    None
}

/// The pclntab: its section, or, for a binary known to be Go (an external PIE link merges the
/// section away) or one without section headers, the validated magic in its data.
fn find_pclntab<'d, R: ReadRef<'d>>(img: &Image<'d, R>, is_go: bool) -> Option<(u64, &'d [u8])> {
    if let Some(found) = img.section(&[".gopclntab", ".data.rel.ro.gopclntab"]) {
        return Some(found);
    }
    if !is_go && img.has_section_headers() {
        return None;
    }
    img.data_segments().find_map(|(addr, data)| {
        let at = pclntab::find_pclntab(data)?;
        Some((addr + at as u64, &data[at..]))
    })
}

/// The address function entries count from. The header records it, but a position-independent
/// binary linked by an external linker may leave that word zero and carry the value in a
/// dynamic relocation instead.
fn text_start<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
    tab_addr: u64,
    tab: &[u8],
) -> Result<u64, String> {
    let parsed = Pclntab::parse(tab, None).map_err(|e| format!("pclntab: {e}"))?;
    if parsed.version == pclntab::PclntabVersion::Go116 {
        return Ok(0);
    }
    let header = parsed.text_start();
    if header != 0 && img.is_code(header) {
        return Ok(header);
    }
    let field = tab_addr + 8 + 2 * u64::from(parsed.ptr_size);
    if let Some(v) = img.relocated_word(field).filter(|v| img.is_code(*v)) {
        return Ok(v);
    }
    let runtime_text = img
        .functions(object::elf::SHT_SYMTAB)
        .into_iter()
        .find(|(n, _, _)| *n == b"runtime.text")
        .map(|(_, a, _)| a);
    runtime_text
        .or_else(|| img.section(&[".text"]).map(|(a, _)| a))
        .ok_or_else(|| "pclntab: the start of Go's text cannot be found".to_string())
}
