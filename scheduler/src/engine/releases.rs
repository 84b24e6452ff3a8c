//! A node's expected slot ends, in time order, for reservation planning.

use std::collections::VecDeque;

use crate::model::{AllocId, Time};

/// (expected end, allocation) pairs, sorted. A sorted ring buffer rather
/// than a tree: a node holds tens to hundreds of slots, new slots tend to
/// end last and old ones leave first, so an insert or a removal shifts few
/// entries, and a search or a planning walk reads contiguous memory.
#[derive(Debug, Default)]
pub(crate) struct Releases(VecDeque<(Time, AllocId)>);

impl Releases {
    /// Where `release` is, or would go: searched in the ring's two halves
    /// as plain slices (a `VecDeque` search maps every probe through the
    /// ring), newest first, since new slots tend to end last.
    fn position(&self, release: &(Time, AllocId)) -> Result<usize, usize> {
        if self.0.back().is_some_and(|last| last < release) {
            return Err(self.0.len());
        }
        let (front, back) = self.0.as_slices();
        match back.first() {
            Some(first) if first <= release => {
                back.binary_search(release).map(|i| i + front.len()).map_err(|i| i + front.len())
            }
            _ => front.binary_search(release),
        }
    }

    pub fn insert(&mut self, release: (Time, AllocId)) {
        if let Err(pos) = self.position(&release) {
            if pos == self.0.len() {
                self.0.push_back(release);
            } else {
                self.0.insert(pos, release);
            }
        }
    }

    pub fn remove(&mut self, release: &(Time, AllocId)) {
        if let Ok(pos) = self.position(release) {
            if pos == 0 {
                self.0.pop_front();
            } else {
                self.0.remove(pos);
            }
        }
    }

    pub fn first(&self) -> Option<&(Time, AllocId)> {
        self.0.front()
    }

    /// The releases expected before `t`, and those from `t` on.
    pub fn split_at(
        &self,
        t: Time,
    ) -> (impl Iterator<Item = &(Time, AllocId)>, impl Iterator<Item = &(Time, AllocId)>) {
        let at = self.0.partition_point(|r| r.0 < t);
        (self.0.range(..at), self.0.range(at..))
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Time, AllocId)> {
        self.0.iter()
    }
}
