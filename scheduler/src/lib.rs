//! # cohort-scheduler
//!
//! Cohort's scheduler core: a pure, deterministic state machine that places
//! gangs of identical slots on a cluster of nodes. Events go in
//! ([`Event`]), decisions come out ([`Decision`]); there is no I/O, no clock
//! and no async, so the same events always yield the same decisions. That is
//! what lets the [`sim`] module replay real cluster logs in virtual time and
//! the property tests throw random event sequences at it.
//!
//! ```
//! use cohort_scheduler::{Config, Engine, Event, Decision, GangSpec, GangId, NodeId, NodeSpec, Resources};
//!
//! let mut engine = Engine::new(Config::default());
//! for i in 0..2 {
//!     let spec = NodeSpec { name: format!("n{i}"), capacity: Resources::new(4000, 8 << 30), labels: Default::default() };
//!     engine.apply(Event::NodeAdded { node: NodeId(i), spec }).unwrap();
//! }
//! // Four slots of 2 cpu: they only fit using both nodes, and start together.
//! let spec = GangSpec::rigid("etl", 4, Resources::new(2000, 1 << 30), "batch", "default");
//! let decisions = engine.handle(Event::GangSubmitted { gang: GangId(1), spec }).unwrap();
//! let placed = decisions.iter().filter(|d| matches!(d, Decision::Place { .. })).count();
//! assert_eq!(placed, 4);
//! ```

pub mod engine;
pub mod event;
pub mod model;
pub mod resources;

pub use engine::{Engine, EngineError, GangPhase, GangView, NodeView, PendingReason, QueueView};
pub use event::{Decision, Event, GangOutcome, RequeueCause, SlotOutcome, StopReason};
pub use model::{
    AllocId, Config, Constraints, GangId, GangSpec, NodeId, NodeSpec, NodeState, OnDrain, Ordering, Placement, Policy,
    PriorityClass, QueueSpec, Restart, Time,
};
pub use resources::Resources;
pub mod sim;
pub mod trace;
