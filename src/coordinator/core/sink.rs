//! Where the core's commands to agents go. The gRPC front door delivers
//! them on each agent's attached stream; tests record them.

use std::sync::{Arc, Mutex};

use super::model::AgentCommand;

/// Delivers commands to agents by node id.
pub trait AgentSink: Send {
    /// Sends, or holds until the agent attaches. Delivery is best effort:
    /// an agent that never gets a command is found out by its reports.
    fn send(&mut self, node: u32, command: AgentCommand);
    /// Forgets the agent's connection and anything held for it (it
    /// re-registered, or it was lost).
    fn disconnect(&mut self, node: u32);
}

/// Keeps every command, for tests: clones share one log.
#[derive(Clone, Default)]
pub struct RecordingSink {
    log: Arc<Mutex<Vec<(u32, AgentCommand)>>>,
}

impl RecordingSink {
    /// Takes the commands sent since the last call.
    pub fn take(&self) -> Vec<(u32, AgentCommand)> {
        std::mem::take(&mut *self.log.lock().expect("sink log"))
    }
}

impl AgentSink for RecordingSink {
    fn send(&mut self, node: u32, command: AgentCommand) {
        self.log.lock().expect("sink log").push((node, command));
    }

    fn disconnect(&mut self, _node: u32) {}
}
