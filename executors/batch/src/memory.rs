//! The memory pool of every process that runs queries: DataFusion's fair
//! spill policy (operators that can spill share the memory the others
//! leave, each up to its fraction, and spill past it), except that a
//! `RepartitionExec`'s buffers count as memory that cannot spill.
//!
//! Why: DataFusion 55's `RepartitionExec` writes batches it cannot reserve
//! memory for to spill files, and its reader waits forever when two input
//! tasks spill at once (apache/datafusion#24883, fixed upstream, in no
//! release yet: 55.2 is the latest). Under the fair policy a
//! repartition's share is a fraction of the pool, which a fast input (a
//! cached table in memory) fills while the join above it is still
//! building: TPC-H q12 on cached tables hung in about one run in
//! three. As memory that cannot spill, its buffers grow into whatever the
//! pool has free and it spills only when the whole pool is taken, as
//! every other operator then must too.

use std::fmt;
use std::sync::Mutex;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};

/// See the module's documentation.
#[derive(Debug)]
pub struct QueryMemory {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consumers that may spill, now registered.
    spillers: usize,
    spillable: usize,
    unspillable: usize,
}

impl QueryMemory {
    pub fn new(limit: usize) -> QueryMemory {
        QueryMemory { limit, state: Mutex::new(State::default()) }
    }
}

/// Whether the pool holds `consumer` to a fair share (and lets it spill).
fn spills(consumer: &MemoryConsumer) -> bool {
    consumer.can_spill() && !consumer.name().starts_with("RepartitionExec")
}

impl MemoryPool for QueryMemory {
    fn name(&self) -> &str {
        "fair, repartitions unspillable"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if spills(consumer) {
            self.state.lock().expect("memory pool state").spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if spills(consumer) {
            let mut state = self.state.lock().expect("memory pool state");
            state.spillers = state.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut state = self.state.lock().expect("memory pool state");
        match spills(reservation.consumer()) {
            true => state.spillable += additional,
            false => state.unspillable += additional,
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut state = self.state.lock().expect("memory pool state");
        match spills(reservation.consumer()) {
            true => state.spillable = state.spillable.saturating_sub(shrink),
            false => state.unspillable = state.unspillable.saturating_sub(shrink),
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut state = self.state.lock().expect("memory pool state");
        let available = if spills(reservation.consumer()) {
            let for_spillers = self.limit.saturating_sub(state.unspillable);
            for_spillers.checked_div(state.spillers).unwrap_or(for_spillers).saturating_sub(reservation.size())
        } else {
            self.limit.saturating_sub(state.unspillable + state.spillable)
        };
        if additional > available {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} needs {additional} more bytes beside its {}; {available} are free to it in a pool of {}",
                reservation.consumer().name(),
                reservation.size(),
                self.limit
            )));
        }
        match spills(reservation.consumer()) {
            true => state.spillable += additional,
            false => state.unspillable += additional,
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        let state = self.state.lock().expect("memory pool state");
        state.spillable + state.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl fmt::Display for QueryMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(limit: {}, reserved: {})", self.name(), self.limit, self.reserved())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_repartition_takes_what_is_free_while_a_sort_keeps_to_its_share() {
        // Given a pool of 1,000 bytes with two spilling operators registered
        let pool: Arc<dyn MemoryPool> = Arc::new(QueryMemory::new(1000));
        let sort = MemoryConsumer::new("SortExec[0]").with_can_spill(true).register(&pool);
        let _other = MemoryConsumer::new("AggregateExec[0]").with_can_spill(true).register(&pool);
        let repartition = MemoryConsumer::new("RepartitionExec[0]").with_can_spill(true).register(&pool);
        // Then the sort may have its half, not more
        sort.try_grow(500).unwrap();
        assert!(sort.try_grow(1).is_err(), "past its fair share it spills");
        // And the repartition, which may spill too, takes what is left, as memory that cannot spill
        repartition.try_grow(500).unwrap();
        let e = repartition.try_grow(1).unwrap_err().to_string();
        assert!(e.contains("RepartitionExec[0] needs 1 more bytes") && e.contains("0 are free"), "{e}");
        assert_eq!(pool.reserved(), 1000);
        // Freed memory is free again
        drop(repartition);
        assert_eq!(pool.reserved(), 500);
    }
}
