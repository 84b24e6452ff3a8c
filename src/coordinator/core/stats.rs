//! What the core counts as it works, for `/metrics`: cumulative since the
//! coordinator started (Prometheus expects counters to reset on restart).
//! Plain numbers in domain terms; the HTTP front door turns them into the
//! exposition format.

use std::collections::BTreeMap;

/// Cumulative counts of the core's work.
#[derive(Clone, Debug, Default)]
pub struct CoreStats {
    /// Slots placed by scheduling passes.
    pub placements: u64,
    /// Slots stopped to make room for more important work.
    pub preemptions: u64,
    pub attempts_started: u64,
    /// Ended attempts (and service instances) by outcome: `succeeded`,
    /// `failed`, `lost`, `preempted`, `restarted`, ...
    pub attempts_ended: BTreeMap<String, u64>,
    /// Executors started again after their work ended early: a gang
    /// re-queued whole, or a service instance that exited.
    pub executor_restarts: u64,
    /// Seconds from submission (or the previous attempt's end) to placement.
    pub queue_wait: Histogram,
}

/// A histogram with fixed bucket bounds, in seconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; the last bucket (+Inf) is implicit.
    pub bounds: &'static [f64],
    /// Per bucket (not cumulative), one more than `bounds`.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// From 10 ms (a warm pass) to an hour (a job that waits behind a long one).
pub const WAIT_BOUNDS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(WAIT_BOUNDS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_falls_in_that_bucket() {
        let mut h = Histogram::new(&[1.0, 5.0]);
        for v in [0.5, 1.0, 3.0, 5.0, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 2, 1]);
        assert_eq!((h.count, h.sum), (5, 18.5));
    }
}
