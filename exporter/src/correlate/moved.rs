//! Traces that moved as a whole. A chain of same-host calls whose trace began here (a thread's
//! children, their callers) can reach a Go server whose request already carried its own
//! trace, chosen in the kernel, onward in a `traceparent` to calls sightline has reported. The
//! chain then takes the Go request's trace rather than split it: its calls that leave
//! afterwards (they finish after their child) are moved to it.

use rustc_hash::FxHashMap as HashMap;

/// Moves remembered at once; past this the table is reset, which costs one trace its joins.
const MAX_MOVES: usize = 4_096;
/// Batches (about 20 ms each) a move is applied for: the chain's calls finish within its
/// slowest request.
const KEEP_BATCHES: u64 = 250;

#[derive(Debug, Default)]
pub struct Moves {
    to: HashMap<u128, (u128, u64)>,
    epoch: u64,
}

impl Moves {
    /// Calls of trace `from` leave in trace `to` from now on.
    pub fn record(&mut self, from: u128, to: u128) {
        if from == to {
            return;
        }
        if self.to.len() >= MAX_MOVES {
            self.to.clear();
        }
        self.to.insert(from, (to, self.epoch));
    }

    /// The trace a call leaving now belongs to.
    pub fn apply(&self, trace_id: &mut u128) {
        if self.to.is_empty() {
            return;
        }
        if let Some((to, _)) = self.to.get(trace_id) {
            *trace_id = *to;
        }
    }

    pub fn end_batch(&mut self) {
        self.epoch += 1;
        let oldest = self.epoch.saturating_sub(KEEP_BATCHES);
        if !self.to.is_empty() {
            self.to.retain(|_, (_, e)| *e >= oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_trace_is_followed_for_a_while() {
        let mut m = Moves::default();
        m.record(1, 2);
        let mut t = 1;
        m.apply(&mut t);
        assert_eq!(t, 2);
        let mut other = 3;
        m.apply(&mut other);
        assert_eq!(other, 3);
        for _ in 0..=KEEP_BATCHES {
            m.end_batch();
        }
        let mut t = 1;
        m.apply(&mut t);
        assert_eq!(t, 1);
    }
}
