//! Struct member offsets from DWARF, when the binary (or its separate debug file) has it.

use gimli::{EndianSlice, LittleEndian, SectionId};
use std::borrow::Cow;
use std::collections::HashMap;

/// The sections a member lookup reads; the rest of DWARF (lines, ranges, locations) is never
/// decompressed.
pub const NEEDED: [SectionId; 4] = [
    SectionId::DebugInfo,
    SectionId::DebugAbbrev,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
];

#[derive(Debug, Default)]
pub struct Members {
    pub offsets: HashMap<(String, String), u64>,
    pub types: std::collections::HashSet<String>,
}

/// Offsets of `fields` (type name, member name), found in one pass over the type DIEs. Types
/// are matched by their DWARF name, which for Go is the package path and type name
/// (`net/http.Request`). A member the file does not describe is absent from the answer; the
/// second map lists the types the file describes at all, since Go's linker drops unused ones.
pub fn member_offsets(
    sections: &HashMap<SectionId, Cow<'_, [u8]>>,
    fields: &[(&str, &str)],
) -> Result<Members, gimli::Error> {
    let dwarf = gimli::Dwarf::load(|id| {
        Ok::<_, gimli::Error>(EndianSlice::new(
            sections.get(&id).map(|c| &**c).unwrap_or(&[]),
            LittleEndian,
        ))
    })?;
    let mut wanted_types: Vec<&str> = fields.iter().map(|(t, _)| *t).collect();
    wanted_types.sort_unstable();
    wanted_types.dedup();
    let mut types = std::collections::HashSet::new();
    let mut out = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // Not `dwarf.unit()`: that also parses the line program, which is never needed here
        // and whose section is not loaded.
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut entries = header.entries(&abbrevs);
        let mut depth = 0isize;
        // The struct being read and the depth of its DIE.
        let mut inside: Option<(&str, isize)> = None;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if inside.is_some_and(|(_, d)| depth <= d) {
                inside = None;
            }
            match entry.tag() {
                gimli::DW_TAG_structure_type => {
                    let Some(name) = entry.attr_value(gimli::DW_AT_name)? else {
                        continue;
                    };
                    let Some(name) = string(&dwarf, name) else {
                        continue;
                    };
                    if let Ok(i) = wanted_types.binary_search(&&*String::from_utf8_lossy(&name)) {
                        inside = Some((wanted_types[i], depth));
                        types.insert(wanted_types[i].to_string());
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((ty, d)) = inside else { continue };
                    if depth != d + 1 {
                        continue;
                    }
                    let (Some(name), Some(loc)) = (
                        entry.attr_value(gimli::DW_AT_name)?,
                        entry.attr_value(gimli::DW_AT_data_member_location)?,
                    ) else {
                        continue;
                    };
                    let Some(name) = string(&dwarf, name) else {
                        continue;
                    };
                    let name = String::from_utf8_lossy(&name);
                    if let (Some(off), true) = (
                        loc.udata_value(),
                        fields.iter().any(|(t, f)| *t == ty && *f == name),
                    ) {
                        out.entry((ty.to_string(), name.into_owned()))
                            .or_insert(off);
                    }
                }
                _ => {}
            }
        }
        // Each type is described once per binary; stop reading when all were met.
        if types.len() >= wanted_types.len() && out.len() >= fields.len() {
            break;
        }
    }
    Ok(Members {
        offsets: out,
        types,
    })
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Names inline (`DW_FORM_string`, which Go uses) or in `.debug_str`.
fn string<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    v: gimli::AttributeValue<Slice<'a>>,
) -> Option<Slice<'a>> {
    match v {
        gimli::AttributeValue::String(s) => Some(s),
        gimli::AttributeValue::DebugStrRef(o) => dwarf.debug_str.get_str(o).ok(),
        _ => None,
    }
}
