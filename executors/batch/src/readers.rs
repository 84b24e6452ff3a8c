//! The queries running now, numbered in the order they started: what
//! tells a compaction when the partitions it replaced have no reader left.
//!
//! A query takes the list of stored partitions when it is planned, and may
//! read them over Flight long after (a worker reads lazily). So partitions
//! replaced by a compaction stay in their stores until every query that
//! started before the replacement has ended: its output read, failed or
//! dropped. Queries that start later plan over the new partitions. This is
//! epoch-based reclamation with the query as the critical section.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The queries running now.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    state: Mutex<Numbered>,
}

#[derive(Debug, Default)]
struct Numbered {
    next: u64,
    running: BTreeSet<u64>,
}

/// One running query; it has ended when this is dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    number: u64,
    of: Arc<InFlight>,
}

impl InFlight {
    pub(crate) fn enter(self: &Arc<Self>) -> Ticket {
        let mut state = self.state.lock().expect("queries in flight");
        let number = state.next;
        state.next += 1;
        state.running.insert(number);
        Ticket { number, of: self.clone() }
    }

    /// The number the next query will take: queries below it started before now.
    pub(crate) fn horizon(&self) -> u64 {
        self.state.lock().expect("queries in flight").next
    }

    /// Whether a query that started before `horizon` is still running.
    pub(crate) fn any_before(&self, horizon: u64) -> bool {
        self.state.lock().expect("queries in flight").running.first().is_some_and(|&oldest| oldest < horizon)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.of.state.lock().expect("queries in flight").running.remove(&self.number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_horizon_waits_for_the_queries_before_it_only() {
        let flight = Arc::new(InFlight::default());
        let early = flight.enter();
        let horizon = flight.horizon();
        let late = flight.enter();
        assert!(flight.any_before(horizon), "the early query still reads");
        drop(early);
        assert!(!flight.any_before(horizon), "a later query does not hold the horizon back");
        drop(late);
        assert!(!flight.any_before(flight.horizon()));
    }
}
