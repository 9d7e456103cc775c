//! A pclntab on its own: header, function table, names, and the magic search used when
//! section headers are gone.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sightline_symbolizer::go::pclntab::{find_pclntab, Pclntab};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Pclntab::parse(data, None) {
        for f in t.funcs() {
            if f.is_err() {
                break;
            }
        }
    }
    let _ = find_pclntab(data);
});
