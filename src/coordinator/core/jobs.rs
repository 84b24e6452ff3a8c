//! Jobs: submission, cancellation, what readers see, where logs are.

use cohort_scheduler::{EngineError, Event, GangId, GangPhase};

use super::error::{CoordinatorError, Result};
use super::model::{JobState, JobView, SlotState, SlotView};
use super::{Core, Job};
use crate::coordinator::store::{JobRecord, SlotRecord};
use crate::spec::parse_job;

impl Core {
    /// Accepts a job spec (TOML as written; `file` names it in errors) and
    /// returns the job's id.
    pub fn submit(&mut self, file: &str, text: &str) -> Result<u64> {
        self.turn(|core| {
            let spec = parse_job(file, text).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
            let id = core.next_job;
            core.engine
                .apply(Event::GangSubmitted { gang: GangId(id), spec: spec.gang.clone() })
                .map_err(|e| CoordinatorError::InvalidInput(format!("{file}: {e}")))?;
            core.next_job += 1;
            core.turn.next_job = true;
            let record = JobRecord {
                id,
                file: file.to_string(),
                spec_toml: text.to_string(),
                name: spec.name.clone(),
                kind: spec.kind.name().to_string(),
                priority: spec.gang.priority.clone(),
                queue: spec.gang.queue.clone(),
                state: JobState::Pending,
                attempts: 0,
                reason: String::new(),
                submitted_at_ms: core.now() as i64,
                slots: vec![SlotRecord::default(); spec.gang.max as usize],
            };
            tracing::info!(job = id, name = %spec.name, "job submitted");
            let what = format!("submitted: {} ({} × {})", spec.name, spec.gang.min, spec.gang.slot);
            core.jobs.insert(id, Job { record, spec });
            core.turn.jobs.insert(id);
            core.announce(id, what);
            core.schedule()?;
            Ok(id)
        })
    }

    /// Stops a job's slots and ends it as cancelled.
    pub fn cancel(&mut self, id: u64) -> Result<JobView> {
        self.turn(|core| {
            match core.engine.apply(Event::GangCancelled { gang: GangId(id) }) {
                Ok(()) => core.schedule()?,
                Err(EngineError::UnknownGang(_)) => {
                    return Err(match core.job_state(id) {
                        Some(state) => CoordinatorError::Conflict(format!("job {id} already {state}")),
                        None => CoordinatorError::NotFound(format!("no job {id}")),
                    });
                }
                Err(e) => return Err(CoordinatorError::Internal(e.to_string())),
            }
            core.job(id)
        })
    }

    pub fn job(&self, id: u64) -> Result<JobView> {
        self.job_view(id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Vec<JobView> {
        self.jobs.keys().filter_map(|&id| self.job_view(id)).collect()
    }

    /// Where a slot's output is: the agent's log service and the allocation.
    pub fn log_source(&self, job: u64, slot: u32) -> Result<(String, u64)> {
        let record = &self.jobs.get(&job).ok_or_else(|| CoordinatorError::NotFound(format!("no job {job}")))?.record;
        let s = record
            .slots
            .get(slot as usize)
            .ok_or_else(|| CoordinatorError::NotFound(format!("job {job} has no slot {slot}")))?;
        if s.alloc_id == 0 {
            return Err(CoordinatorError::Conflict(format!("slot {slot} of job {job} has not run yet")));
        }
        let agent = self
            .agents
            .values()
            .find(|a| a.record.name == s.node)
            .ok_or_else(|| CoordinatorError::NotFound(format!("node {} is unknown", s.node)))?;
        Ok((agent.record.logs_address.clone(), s.alloc_id))
    }

    /// The job's state: the engine's while it lives, the record's after.
    pub(super) fn job_state(&self, id: u64) -> Option<JobState> {
        let job = self.jobs.get(&id)?;
        Some(match self.engine.gang(GangId(id)) {
            Some(g) if g.phase == GangPhase::Pending => JobState::Pending,
            Some(_) => JobState::Running,
            None => job.record.state,
        })
    }

    fn job_view(&self, id: u64) -> Option<JobView> {
        let job = &self.jobs.get(&id)?.record;
        let live = self.engine.gang(GangId(id));
        let reason = match &live {
            Some(g) if g.phase == GangPhase::Pending => g.reason.clone().unwrap_or_default(),
            _ => job.reason.clone(),
        };
        Some(JobView {
            id,
            name: job.name.clone(),
            kind: job.kind.clone(),
            state: self.job_state(id)?,
            attempts: live.as_ref().map_or(job.attempts, |g| g.attempts),
            priority: job.priority.clone(),
            queue: job.queue.clone(),
            reason,
            slots: job
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotView {
                    index: i as u32,
                    node: s.node.clone(),
                    state: s.state,
                    alloc_id: s.alloc_id,
                    exit_code: s.exit_code,
                })
                .collect(),
            submitted_at_ms: job.submitted_at_ms,
        })
    }

    /// Sets a slot's state in the job's record.
    pub(super) fn set_slot(&mut self, job: u64, slot: u32, f: impl FnOnce(&mut SlotRecord)) {
        if let Some(j) = self.jobs.get_mut(&job)
            && let Some(s) = j.record.slots.get_mut(slot as usize)
        {
            f(s);
            self.turn.jobs.insert(job);
        }
    }

    /// Changes a job's record.
    pub(super) fn update_job(&mut self, job: u64, f: impl FnOnce(&mut JobRecord)) {
        if let Some(j) = self.jobs.get_mut(&job) {
            f(&mut j.record);
            self.turn.jobs.insert(job);
        }
    }
}

impl SlotState {
    pub(super) fn ended_as(outcome: cohort_scheduler::SlotOutcome) -> SlotState {
        match outcome {
            cohort_scheduler::SlotOutcome::Succeeded => SlotState::Succeeded,
            cohort_scheduler::SlotOutcome::Failed => SlotState::Failed,
            cohort_scheduler::SlotOutcome::Stopped => SlotState::Stopped,
        }
    }
}
