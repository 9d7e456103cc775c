//! The RED summary printed on exit: rate, errors and duration percentiles per service.

use super::live::format_duration;
use super::Sink;
use crate::protocols::call::Call;
use crate::protocols::Role;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A log-scale histogram: 8 buckets per power of two, so percentiles are within ~9%, in 4 KiB
/// per service however many calls it sees.
#[derive(Clone)]
struct LogHistogram {
    buckets: Vec<u64>,
}

const PER_OCTAVE: f64 = 8.0;
const BUCKETS: usize = 64 * 8;

impl LogHistogram {
    fn new() -> Self {
        LogHistogram {
            buckets: vec![0; BUCKETS],
        }
    }

    fn index(ns: u64) -> usize {
        (((ns.max(1) as f64).log2() * PER_OCTAVE) as usize).min(BUCKETS - 1)
    }

    fn record(&mut self, ns: u64) {
        self.buckets[Self::index(ns)] += 1;
    }

    /// The upper edge of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return 2f64.powf((i + 1) as f64 / PER_OCTAVE) as u64;
            }
        }
        u64::MAX
    }
}

#[derive(Clone)]
struct Row {
    calls: u64,
    errors: u64,
    hist: LogHistogram,
}

#[derive(Clone, Default)]
pub struct Summary {
    rows: Arc<Mutex<BTreeMap<(String, &'static str), Row>>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    pub service: String,
    pub role: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    pub fn rows(&self, elapsed_s: f64) -> Vec<SummaryRow> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter()
            .map(|((service, role), r)| SummaryRow {
                service: service.clone(),
                role,
                calls: r.calls,
                errors: r.errors,
                rate_per_s: r.calls as f64 / elapsed_s.max(1e-3),
                p50_ms: r.hist.quantile(0.5) as f64 / 1e6,
                p90_ms: r.hist.quantile(0.9) as f64 / 1e6,
                p99_ms: r.hist.quantile(0.99) as f64 / 1e6,
            })
            .collect()
    }

    pub fn render_text(&self, elapsed_s: f64) -> String {
        let rows = self.rows(elapsed_s);
        let mut s = format!(
            "\nRED summary over {:.1}s\n{:<28} {:<6} {:>8} {:>9} {:>8} {:>10} {:>10} {:>10}\n",
            elapsed_s, "SERVICE", "ROLE", "CALLS", "RATE/s", "ERRORS", "P50", "P90", "P99"
        );
        if rows.is_empty() {
            s.push_str("(no HTTP calls seen)\n");
        }
        for r in rows {
            s.push_str(&format!(
                "{:<28} {:<6} {:>8} {:>9.2} {:>8} {:>10} {:>10} {:>10}\n",
                super::printable(&r.service),
                r.role,
                r.calls,
                r.rate_per_s,
                r.errors,
                format_duration((r.p50_ms * 1e6) as u64),
                format_duration((r.p90_ms * 1e6) as u64),
                format_duration((r.p99_ms * 1e6) as u64),
            ));
        }
        s
    }
}

impl Sink for Summary {
    fn on_call(&mut self, c: &Call) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let role = match c.role {
            Role::Client => "client",
            Role::Server => "server",
        };
        let row = rows
            .entry((c.process.service_name.clone(), role))
            .or_insert_with(|| Row {
                calls: 0,
                errors: 0,
                hist: LogHistogram::new(),
            });
        row.calls += 1;
        if c.is_error() {
            row.errors += 1;
        }
        row.hist.record(c.duration_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_close() {
        let mut h = LogHistogram::new();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000);
        }
        let p50 = h.quantile(0.5) as f64 / 1e6;
        let p99 = h.quantile(0.99) as f64 / 1e6;
        assert!((45.0..=56.0).contains(&p50), "{p50}");
        assert!((95.0..=110.0).contains(&p99), "{p99}");
    }
}
