//! A whole file through everything the symbolizer reads from it: ELF headers, symbol tables,
//! build info, pclntab, RET scans, DWARF and the disassembly rules.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sightline_symbolizer::go::{self, OffsetSource};
use sightline_symbolizer::image::Image;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = Image::parse(data) else { return };
    let _ = sightline_symbolizer::find_functions(&img, &sightline_symbolizer::SSL_FUNCTIONS);
    let _ = go::analyze(
        &img,
        None,
        &[OffsetSource::Dwarf, OffsetSource::Table, OffsetSource::Disassembly],
    );
});
