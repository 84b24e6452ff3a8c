//! Placement constraints as units, composed in one place.
//!
//! Each [`Filter`] answers, for one node: can it *ever* hold a slot of the
//! gang (its labels and size, whatever runs there), how many slots can it
//! hold *now* (given what runs there), and can it hold one *once victims
//! are evicted*. It names itself in pending reasons and signs the gang's
//! shape, so gangs with the same signature fit in exactly the same places
//! and may share verdicts. The search over nodes, the reservation planner,
//! the preemption planner and the feasibility check all ask the filters
//! through [`Filters`], never the constraints directly. Dispatch is a
//! `match`: the hot path makes no virtual calls.
//!
//! `within` (all slots in one label domain) is not a per-node filter but a
//! partition: the engine searches each domain in turn (`Engine::domains`).
//! Scoring (pack, spread, cached-data locality) orders the search and is
//! not part of the signature, since it changes where a gang lands, not
//! whether it fits.
//!
//! Adding a constraint is one new variant here, its arms, and a table test.

use std::hash::{Hash, Hasher};

use crate::engine::topology::{KeyId, PairId, Topology};
use crate::engine::{Engine, Gang, GangPhase, Node};
use crate::model::{Constraints, NodeId};

/// One placement constraint of a gang.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Filter {
    /// The node must carry these labels (Kubernetes' node selector).
    Labels(Vec<PairId>),
    /// At most one slot of the gang per node (PBS `N:ppn=P`, one executor per host).
    OnePerNode,
    /// Never on a node that holds a slot of any gang of this group.
    AntiAffinity(u32),
    /// Only on idle nodes at start, which it then keeps to itself (PBS `#excl`).
    Exclusive,
}

/// A gang's constraints, compiled at submission.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Filters {
    pub list: Vec<Filter>,
    /// All slots share one value of this label key.
    pub within: Option<KeyId>,
}

impl Filters {
    pub fn compile(c: &Constraints, group: Option<u32>, topology: &mut Topology) -> Filters {
        let mut list = Vec::new();
        if !c.labels.is_empty() {
            let mut pairs: Vec<PairId> = c.labels.iter().map(|(k, v)| topology.pair(k, v)).collect();
            pairs.sort_unstable();
            list.push(Filter::Labels(pairs));
        }
        if let Some(group) = group {
            list.push(Filter::AntiAffinity(group));
        } else if c.one_slot_per_node {
            list.push(Filter::OnePerNode);
        }
        if c.exclusive {
            list.push(Filter::Exclusive);
        }
        Filters { list, within: c.within.as_ref().map(|k| topology.key(k)) }
    }

    /// No constraint but size: verdicts about size alone apply.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.within.is_none()
    }

    /// At most one slot per node.
    pub fn one_per_node(&self) -> bool {
        self.list.iter().any(|f| matches!(f, Filter::OnePerNode | Filter::AntiAffinity(_)))
    }

    pub fn exclusive(&self) -> bool {
        self.list.contains(&Filter::Exclusive)
    }

    /// Whether a slot of its anti-affinity group runs on the node, or
    /// another gang of the group holds room there, which keeps the gang off
    /// it until that has gone.
    pub fn held_apart(&self, engine: &Engine, g: &Gang, id: NodeId) -> bool {
        let node = engine.node(id);
        self.list.iter().any(|f| match f {
            Filter::AntiAffinity(group) => {
                node.groups.iter().any(|&(gr, n)| gr == *group && n > 0) || engine.group_claims(*group, id, g.id)
            }
            _ => false,
        })
    }

    /// The label pairs the gang selects on (for choosing the smallest index to search).
    pub fn label_pairs(&self) -> &[PairId] {
        self.list
            .iter()
            .find_map(|f| match f {
                Filter::Labels(p) => Some(p.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// Whether a node with these labels could ever hold a slot (size is the caller's).
    pub fn ever(&self, labels: &[PairId]) -> bool {
        self.list.iter().all(|f| match f {
            Filter::Labels(want) => want.iter().all(|p| labels.binary_search(p).is_ok()),
            Filter::OnePerNode | Filter::AntiAffinity(_) | Filter::Exclusive => true,
        })
    }

    /// How many more slots the node may take now by the filters (size aside);
    /// `already` are placed there in this search.
    #[inline]
    pub fn now(&self, engine: &Engine, g: &Gang, id: NodeId, node: &Node, already: u32) -> u32 {
        let mut cap = u32::MAX;
        for f in &self.list {
            let k = match f {
                Filter::Labels(want) => {
                    if want.iter().all(|p| node.label_ids.binary_search(p).is_ok()) {
                        u32::MAX
                    } else {
                        0
                    }
                }
                Filter::OnePerNode => {
                    let mine_there =
                        g.phase == GangPhase::Running && node.allocs.iter().any(|a| engine.allocs[a].gang == g.id);
                    if already > 0 || mine_there { 0 } else { 1 }
                }
                Filter::AntiAffinity(group) => {
                    if already > 0
                        || node.groups.iter().any(|&(gr, n)| gr == *group && n > 0)
                        || engine.group_claims(*group, id, g.id)
                    {
                        0
                    } else {
                        1
                    }
                }
                Filter::Exclusive => {
                    // Idle, and held for nobody who claimed it before this gang did.
                    if node.allocated.is_zero() && !engine.claimed_before(g.id, id) { u32::MAX } else { 0 }
                }
            };
            cap = cap.min(k);
            if cap == 0 {
                return 0;
            }
        }
        cap
    }

    /// Whether the node could hold a slot once every slot on it for which
    /// `evictable` holds were gone. Anti-affinity is never lifted by
    /// eviction: a group member that is a victim still runs through its
    /// grace period, and the preemptor must fit the moment victims leave.
    pub fn after_eviction(
        &self,
        engine: &Engine,
        g: &Gang,
        id: NodeId,
        mut evictable: impl FnMut(crate::model::AllocId) -> bool,
    ) -> bool {
        let node = engine.node(id);
        self.list.iter().all(|f| match f {
            Filter::Labels(want) => want.iter().all(|p| node.label_ids.binary_search(p).is_ok()),
            Filter::OnePerNode => true,
            Filter::AntiAffinity(_) => !self.held_apart(engine, g, id),
            // Idle once its victims leave, and held for nobody else.
            Filter::Exclusive => node.reserved.is_zero() && node.allocs.iter().all(|&a| evictable(a)),
        })
    }

    /// Adds what the filters constrain to a shape signature.
    pub fn sign(&self, h: &mut impl Hasher) {
        self.within.hash(h);
        for f in &self.list {
            match f {
                Filter::Labels(p) => (1u8, p).hash(h),
                Filter::OnePerNode => 2u8.hash(h),
                Filter::AntiAffinity(g) => (3u8, g).hash(h),
                Filter::Exclusive => 4u8.hash(h),
            }
        }
    }

    /// The constraints in words, for pending reasons: ` (on nodes labelled zone=a; one slot per node)`.
    pub fn describe(&self, topology: &Topology) -> String {
        let mut parts: Vec<String> = self
            .list
            .iter()
            .map(|f| match f {
                Filter::Labels(p) => {
                    let names: Vec<String> = p.iter().map(|&p| topology.pair_name(p)).collect();
                    format!("on nodes labelled {}", names.join(", "))
                }
                Filter::OnePerNode => "one slot per node".to_string(),
                Filter::AntiAffinity(_) => "apart from its anti-affinity group".to_string(),
                Filter::Exclusive => "exclusive: needs idle nodes".to_string(),
            })
            .collect();
        if let Some(k) = self.within {
            parts.push(format!("all within one `{}`", topology.key_name(k)));
        }
        if parts.is_empty() { String::new() } else { format!(" ({})", parts.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn compile(c: Constraints, group: Option<u32>, t: &mut Topology) -> Filters {
        Filters::compile(&c, group, t)
    }

    /// Each constraint: which node labels it accepts, and how it signs.
    #[test]
    fn each_filter_judges_labels_and_signs_itself() {
        let mut t = Topology::default();
        let zone_a = t.intern_labels(&BTreeMap::from([("zone".into(), "a".into())]));
        let zone_b = t.intern_labels(&BTreeMap::from([("zone".into(), "b".into())]));
        let labels = Constraints { labels: BTreeMap::from([("zone".into(), "a".into())]), ..Constraints::default() };
        let within = Constraints { within: Some("zone".into()), ..Constraints::default() };
        let cases: Vec<(&str, Filters, bool, bool)> = vec![
            ("none", compile(Constraints::default(), None, &mut t), true, true),
            ("labels", compile(labels, None, &mut t), true, false),
            ("within", compile(within, None, &mut t), true, true),
            (
                "one per node",
                compile(Constraints { one_slot_per_node: true, ..Constraints::default() }, None, &mut t),
                true,
                true,
            ),
            ("anti-affinity", compile(Constraints::default(), Some(7), &mut t), true, true),
            ("exclusive", compile(Constraints { exclusive: true, ..Constraints::default() }, None, &mut t), true, true),
        ];
        let mut signatures = Vec::new();
        for (name, f, on_a, on_b) in &cases {
            assert_eq!(f.ever(&zone_a), *on_a, "{name} on zone=a");
            assert_eq!(f.ever(&zone_b), *on_b, "{name} on zone=b");
            let mut h = rustc_hash::FxHasher::default();
            f.sign(&mut h);
            signatures.push(h.finish());
        }
        let mut distinct = signatures.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), cases.len(), "every constraint changes the signature");
    }
}
