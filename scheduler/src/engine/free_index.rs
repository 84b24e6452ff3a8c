//! The free-capacity index: ready nodes ordered by (size class, free cpu,
//! free memory, id), cut into blocks that know their largest free cpu and
//! memory.
//!
//! Packing wants the nodes that fit a slot in best-fit order. An ordered
//! set gives the order but not the fit: when memory is the scarce resource,
//! most nodes with enough cpu lack memory, and a walk along the cpu order
//! visits them all to find the few that fit (on the Alibaba 2017 log, about
//! 600 nodes per search). Each block here keeps the maxima of its entries,
//! so a search skips a whole block that cannot hold the slot and looks only
//! inside blocks that can.
//!
//! ```text
//! blocks:  [ (0,8,2) (0,8,3) (0,9,1) | max cpu 9, mem 3 ]  <- skipped for 4 GiB
//!          [ (0,9,6) (0,12,1) ...    | max cpu 16, mem 6 ] <- searched
//! ```

/// (size class, free cpu, free memory, node id)
pub(crate) type IndexKey = (u64, u64, u64, u32);

/// A block splits in two above this many entries.
const SPLIT_ABOVE: usize = 128;
/// A block below this many entries merges into a neighbour.
const MERGE_BELOW: usize = 16;

#[derive(Debug, Default)]
struct Block {
    keys: Vec<IndexKey>,
    /// Its last key, kept beside the maxima so that finding a key's block
    /// reads one array instead of every block's keys.
    last: IndexKey,
    max_cpu: u64,
    max_memory: u64,
}

impl Block {
    fn new(keys: Vec<IndexKey>) -> Block {
        let mut block = Block { keys, ..Block::default() };
        block.refresh();
        block
    }

    fn refresh(&mut self) {
        self.last = self.keys.last().copied().unwrap_or_default();
        self.max_cpu = self.keys.iter().map(|k| k.1).max().unwrap_or(0);
        self.max_memory = self.keys.iter().map(|k| k.2).max().unwrap_or(0);
    }

    /// Keeps the maxima and last key right after `gone` left, near `pos`.
    /// A maximum survives if the last key or a neighbour of `pos` still has
    /// it (like nodes sit side by side, and in a block of one size class the
    /// last key has the most cpu); only otherwise is the block rescanned.
    fn after_losing(&mut self, gone: &IndexKey, pos: usize) {
        let keys = &self.keys;
        let kept = |f: fn(&IndexKey) -> u64, v: u64| {
            keys.last().is_some_and(|k| f(k) == v)
                || keys.get(pos).is_some_and(|k| f(k) == v)
                || pos > 0 && keys.get(pos - 1).is_some_and(|k| f(k) == v)
                || keys.get(pos + 1).is_some_and(|k| f(k) == v)
        };
        let lost_max =
            gone.1 == self.max_cpu && !kept(|k| k.1, gone.1) || gone.2 == self.max_memory && !kept(|k| k.2, gone.2);
        if lost_max {
            self.refresh();
        } else {
            self.last = keys.last().copied().unwrap_or_default();
        }
    }

    fn may_hold(&self, cpu: u64, memory: u64) -> bool {
        self.max_cpu >= cpu && self.max_memory >= memory
    }
}

/// An ordered set of [`IndexKey`]s with fit-aware search.
#[derive(Debug, Default)]
pub(crate) struct FreeIndex {
    /// Non-empty blocks in key order; every key of a block precedes every key of the next.
    blocks: Vec<Block>,
    len: usize,
}

impl FreeIndex {
    /// The block a key belongs in: the first whose last key is not below it.
    fn block_for(&self, key: &IndexKey) -> usize {
        let b = self.blocks.partition_point(|b| b.last < *key);
        b.min(self.blocks.len().saturating_sub(1))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, key: IndexKey) {
        if self.blocks.is_empty() {
            self.blocks.push(Block::new(vec![key]));
            self.len = 1;
            return;
        }
        let b = self.block_for(&key);
        self.insert_into(b, key);
    }

    /// Inserts into block `b`, which `block_for` chose.
    fn insert_into(&mut self, b: usize, key: IndexKey) {
        let block = &mut self.blocks[b];
        if let Err(pos) = block.keys.binary_search(&key) {
            self.len += 1;
            block.keys.insert(pos, key);
            block.last = block.last.max(key);
            block.max_cpu = block.max_cpu.max(key.1);
            block.max_memory = block.max_memory.max(key.2);
            if block.keys.len() > SPLIT_ABOVE {
                self.split(b);
            }
        }
    }

    pub fn remove(&mut self, key: &IndexKey) {
        if self.blocks.is_empty() {
            return;
        }
        let b = self.block_for(key);
        self.remove_from(b, key);
    }

    /// Removes from block `b`; returns whether blocks were merged (their indices moved).
    fn remove_from(&mut self, b: usize, key: &IndexKey) -> bool {
        let block = &mut self.blocks[b];
        let Ok(pos) = block.keys.binary_search(key) else { return false };
        block.keys.remove(pos);
        self.len -= 1;
        block.after_losing(key, pos);
        if block.keys.len() < MERGE_BELOW {
            self.merge(b);
            return true;
        }
        false
    }

    /// Moves a key to its new value: a node whose free room changed. When
    /// both fall in one block (the common case: a slot more or less moves a
    /// node a little), the entries between shift by one instead of being
    /// moved out and back.
    pub fn replace(&mut self, old: &IndexKey, new: IndexKey) {
        if self.blocks.is_empty() {
            self.insert(new);
            return;
        }
        if new == *old {
            return;
        }
        let b = self.block_for(old);
        let b_new = self.block_for(&new);
        if b_new != b {
            // Different blocks: take it out of one and file it in the other
            // (a merge after the removal may shift the blocks, so look again then).
            let merged = self.remove_from(b, old);
            let b_new = if merged { self.block_for(&new) } else { b_new };
            self.insert_into(b_new, new);
            return;
        }
        let block = &mut self.blocks[b];
        let Ok(from) = block.keys.binary_search(old) else {
            self.insert(new);
            return;
        };
        let to = block.keys.partition_point(|k| *k < new);
        if to > from {
            block.keys[from..to].rotate_left(1);
            block.keys[to - 1] = new;
        } else {
            block.keys[to..=from].rotate_right(1);
            block.keys[to] = new;
        }
        block.max_cpu = block.max_cpu.max(new.1);
        block.max_memory = block.max_memory.max(new.2);
        block.after_losing(old, to);
    }

    fn split(&mut self, b: usize) {
        let block = &mut self.blocks[b];
        let upper = block.keys.split_off(block.keys.len() / 2);
        block.refresh();
        self.blocks.insert(b + 1, Block::new(upper));
    }

    /// Folds a small block into its next (or previous) neighbour, dropping it if empty.
    fn merge(&mut self, b: usize) {
        if self.blocks[b].keys.is_empty() {
            self.blocks.remove(b);
            return;
        }
        if self.blocks.len() == 1 {
            return;
        }
        let (into, from) = if b + 1 < self.blocks.len() { (b, b + 1) } else { (b - 1, b) };
        let moved = self.blocks.remove(from);
        let target = &mut self.blocks[into];
        target.keys.extend(moved.keys);
        target.last = target.last.max(moved.last);
        target.max_cpu = target.max_cpu.max(moved.max_cpu);
        target.max_memory = target.max_memory.max(moved.max_memory);
        if target.keys.len() > SPLIT_ABOVE {
            self.split(into);
        }
    }

    /// Every key, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &IndexKey> {
        self.blocks.iter().flat_map(|b| b.keys.iter())
    }

    /// The keys with at least this much free cpu and memory, in order;
    /// blocks that hold no such key are skipped whole.
    pub fn fitting(&self, cpu: u64, memory: u64) -> impl DoubleEndedIterator<Item = &IndexKey> {
        self.blocks
            .iter()
            .filter(move |b| b.may_hold(cpu, memory))
            .flat_map(|b| b.keys.iter())
            .filter(move |k| k.1 >= cpu && k.2 >= memory)
    }

    /// The most free cpu and the most free memory on any node (not
    /// necessarily the same node).
    pub fn largest_room(&self) -> (u64, u64) {
        self.blocks.iter().fold((0, 0), |(c, m), b| (c.max(b.max_cpu), m.max(b.max_memory)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The index agrees with an ordered set under a long random mix of inserts and removals.
    #[test]
    fn agrees_with_an_ordered_set() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut index = FreeIndex::default();
        let mut reference = BTreeSet::new();
        for step in 0..20_000 {
            let key =
                (rng.random_range(0..3), rng.random_range(0..64), rng.random_range(0..64), rng.random_range(0..500));
            if rng.random_bool(0.3) && !reference.is_empty() {
                let present: IndexKey = *reference.iter().nth(rng.random_range(0..reference.len())).unwrap();
                let moved = (present.0, rng.random_range(0..64), rng.random_range(0..64), present.3);
                if !reference.contains(&moved) {
                    index.replace(&present, moved);
                    reference.remove(&present);
                    reference.insert(moved);
                }
            } else if rng.random_bool(0.55) {
                index.insert(key);
                reference.insert(key);
            } else if let Some(&present) = reference.iter().nth(rng.random_range(0..reference.len().max(1))) {
                index.remove(&present);
                reference.remove(&present);
            }
            if step % 97 == 0 {
                let all: Vec<_> = index.iter().copied().collect();
                assert_eq!(all, reference.iter().copied().collect::<Vec<_>>(), "after step {step}");
                let (cpu, mem) = (rng.random_range(0..64), rng.random_range(0..64));
                let fit: Vec<_> = index.fitting(cpu, mem).copied().collect();
                let expected: Vec<_> = reference.iter().filter(|k| k.1 >= cpu && k.2 >= mem).copied().collect();
                assert_eq!(fit, expected, "fitting ({cpu}, {mem}) after step {step}");
                let rev: Vec<_> = index.fitting(cpu, mem).rev().copied().collect();
                assert_eq!(rev, expected.into_iter().rev().collect::<Vec<_>>());
                let room = reference.iter().fold((0, 0), |(c, m), k| (k.1.max(c), k.2.max(m)));
                assert_eq!(index.largest_room(), room);
                assert!(index.blocks.iter().all(|b| !b.keys.is_empty() && b.keys.len() <= SPLIT_ABOVE));
                assert!(index.blocks.iter().all(|b| b.keys.last() == Some(&b.last)));
                assert_eq!(index.len(), reference.len());
            }
        }
    }
}
