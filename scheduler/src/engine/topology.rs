//! What the cluster is made of, indexed so that constrained gangs never scan
//! every node: label pairs interned to small ids, a free-capacity index per
//! label pair that some gang selects on, the label domains (`within`) with
//! their ready nodes, and the ready nodes grouped by shape (capacity and
//! labels), on which feasibility is judged.
//!
//! Indexes are created when a gang first needs them (at submission, which
//! may take time). The free index is kept up to date by `Engine::reindex`
//! on every placement; a label index only learns which of its nodes
//! changed, and catches up when a search is about to read it
//! (`Engine::catch_up`), so nodes that change often are re-filed once per
//! search rather than once per slot, and labels nobody searches cost
//! almost nothing.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::engine::free_index::FreeIndex;
use crate::resources::Resources;

/// An interned `key=value` node label.
pub(crate) type PairId = u32;
/// An interned label key.
pub(crate) type KeyId = u32;

/// Ready nodes of one shape: same capacity, same labels.
pub(crate) type ShapeKey = (Resources, Vec<PairId>);

#[derive(Debug, Default)]
pub(crate) struct Topology {
    pairs: FxHashMap<(String, String), PairId>,
    /// (key, value) of each pair id.
    pair_names: Vec<(KeyId, String)>,
    keys: FxHashMap<String, KeyId>,
    key_names: Vec<String>,
    /// Per pair id: the free index of ready nodes carrying it, once tracked.
    pub label_index: Vec<Option<FreeIndex>>,
    /// Per pair id: its nodes whose entry changed since the index last caught up.
    pub stale: Vec<Vec<crate::model::NodeId>>,
    /// Per key id, once some gang asks for `within` it: value → (pair, ready nodes).
    pub domains: Vec<Option<BTreeMap<String, (PairId, u32)>>>,
    /// Ready nodes by shape, with how many there are.
    pub shapes: BTreeMap<ShapeKey, u32>,
}

impl Topology {
    pub fn key(&mut self, key: &str) -> KeyId {
        if let Some(&id) = self.keys.get(key) {
            return id;
        }
        let id = self.key_names.len() as KeyId;
        self.keys.insert(key.to_string(), id);
        self.key_names.push(key.to_string());
        self.domains.push(None);
        id
    }

    pub fn pair(&mut self, key: &str, value: &str) -> PairId {
        if let Some(&id) = self.pairs.get(&(key.to_string(), value.to_string())) {
            return id;
        }
        let k = self.key(key);
        let id = self.pair_names.len() as PairId;
        self.pairs.insert((key.to_string(), value.to_string()), id);
        self.pair_names.push((k, value.to_string()));
        self.label_index.push(None);
        self.stale.push(Vec::new());
        id
    }

    /// The key of a pair.
    pub fn key_of(&self, pair: PairId) -> KeyId {
        self.pair_names[pair as usize].0
    }

    pub fn key_name(&self, key: KeyId) -> &str {
        &self.key_names[key as usize]
    }

    /// `key=value` of a pair, for reasons.
    pub fn pair_name(&self, pair: PairId) -> String {
        let (k, v) = &self.pair_names[pair as usize];
        format!("{}={v}", self.key_names[*k as usize])
    }

    pub fn value_of(&self, pair: PairId) -> &str {
        &self.pair_names[pair as usize].1
    }

    /// Interns a node's labels, sorted.
    pub fn intern_labels(&mut self, labels: &BTreeMap<String, String>) -> Vec<PairId> {
        let mut ids: Vec<PairId> = labels.iter().map(|(k, v)| self.pair(k, v)).collect();
        ids.sort_unstable();
        ids
    }

    /// A node entered or left the ready set: its shape count, its domains.
    pub fn ready_changed(&mut self, capacity: Resources, labels: &[PairId], ready: bool) {
        let shape = (capacity, labels.to_vec());
        if ready {
            *self.shapes.entry(shape).or_default() += 1;
        } else if let Some(n) = self.shapes.get_mut(&shape) {
            *n -= 1;
            if *n == 0 {
                self.shapes.remove(&shape);
            }
        }
        for &p in labels {
            let (k, ref v) = self.pair_names[p as usize];
            if let Some(domains) = &mut self.domains[k as usize] {
                let entry = domains.entry(v.clone()).or_insert((p, 0));
                if ready {
                    entry.1 += 1;
                    // A new value of a tracked key: its nodes get an index too.
                    self.label_index[p as usize].get_or_insert_with(FreeIndex::default);
                } else {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        domains.remove(v);
                    }
                }
            }
        }
    }

    /// Whether a label pair has its own free index.
    pub fn tracks(&self, pair: PairId) -> bool {
        self.label_index[pair as usize].is_some()
    }

    /// The free index of the nodes carrying `pair`.
    pub fn index_of(&self, pair: PairId) -> Option<&FreeIndex> {
        self.label_index[pair as usize].as_ref()
    }

    /// The domains of a key, once tracked: value → (pair, ready nodes).
    pub fn domains_of(&self, key: KeyId) -> Option<&BTreeMap<String, (PairId, u32)>> {
        self.domains[key as usize].as_ref()
    }
}
