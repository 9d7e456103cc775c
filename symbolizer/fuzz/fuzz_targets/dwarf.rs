//! DWARF member lookup over arbitrary `.debug_abbrev` and `.debug_info`: the first two bytes
//! say how much of the input is the abbreviations.
#![no_main]
use gimli::SectionId;
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (abbrev, info) = data[2..].split_at(split);
    let mut sections = HashMap::new();
    sections.insert(SectionId::DebugAbbrev, Cow::Borrowed(abbrev));
    sections.insert(SectionId::DebugInfo, Cow::Borrowed(info));
    let _ = sightline_symbolizer::dwarf::member_offsets(
        &sections,
        &[("net/http.Request", "Method"), ("runtime.g", "goid")],
    );
});
