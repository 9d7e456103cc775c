//! HTTP/1.x reconstruction under arbitrary records: any bytes, any split, any truncation.
//! Input format: repeated [flags: u8][len: u8][gap: u16 le][len bytes]; bit 0 of flags is the
//! direction, bit 1 closes the connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline::protocols::http1::{Http1Conn, Output, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let mut conn = Http1Conn::default();
    let mut out = Output::default();
    let mut rest = data;
    let mut t = 0u64;
    while rest.len() >= 4 {
        let flags = rest[0];
        let len = rest[1] as usize;
        let gap = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let take = len.min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        t += 1;
        conn.feed(flags & 1 == 1, chunk, take + gap, t, t + 1, &mut out);
        if flags & 2 == 2 {
            conn.close(&mut out);
        }
        // Exchanges end no earlier than they start, whatever the input.
        for e in out.exchanges.drain(..) {
            assert!(e.end_ns >= e.start_ns);
        }
        out.drops.clear();
    }
    conn.close(&mut out);
    let _ = MAX_HEAD;
});
