//! Jobs: submission, cancellation, what readers see, where logs are.

use cohort_scheduler::{EngineError, Event, GangId, GangPhase};

use super::error::{CoordinatorError, Result};
use super::model::{JobState, JobView, SlotState, SlotView};
use super::{Core, Job};
use crate::coordinator::store::{JobRecord, SlotRecord};
use crate::spec::parse_job;

/// A spec the scheduler refused, as `file:line: field: why` where the
/// refusal is about one field.
fn located(file: &str, text: &str, e: &EngineError) -> String {
    let field = match e {
        EngineError::UnknownClass(..) => "priority",
        EngineError::UnknownQueue(_) => "queue",
        _ => return format!("{file}: {e}"),
    };
    format!("{file}:{}: {field}: {e}", crate::spec::line_of_field(text, field))
}

impl Core {
    /// Accepts a job spec (TOML as written; `file` names it in errors) and
    /// returns the job's id. A service spec whose name matches a running
    /// service is a rolling update of it, and returns its id.
    pub fn submit(&mut self, file: &str, text: &str) -> Result<u64> {
        self.turn(|core| {
            let spec = parse_job(file, text).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
            core.accept(file, text, spec)
        })
    }

    /// [`Core::submit`] for a spec its front door already parsed from `text`
    /// (off the core's task, to check who may submit it).
    pub fn submit_parsed(&mut self, file: &str, text: &str, spec: crate::spec::JobSpec) -> Result<u64> {
        self.turn(|core| core.accept(file, text, spec))
    }

    /// A parsed job, within the turn that submits it.
    fn accept(&mut self, file: &str, text: &str, spec: crate::spec::JobSpec) -> Result<u64> {
        crate::spec::check_new(file, text, &spec).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        if spec.kind.service().is_some()
            && let Some(id) = self.running_service(&spec.name)
        {
            // A pipeline is never updated in place (its members have no
            // health to roll on), and one kind never replaces another.
            let running = &self.jobs[&id].record;
            if running.kind != spec.kind.name() || matches!(spec.kind, crate::spec::JobKind::Pipeline { .. }) {
                return Err(CoordinatorError::Conflict(format!(
                    "{file}: {} `{}` already exists (job {id}); delete it first to replace it with this {}",
                    running.kind,
                    spec.name,
                    spec.kind.name()
                )));
            }
            self.start_deployment(id, file, text, spec)?;
            return Ok(id);
        }
        let id = self.next_job;
        self.engine
            .apply(Event::GangSubmitted { gang: GangId(id), spec: spec.gang.clone() })
            .map_err(|e| CoordinatorError::InvalidInput(located(file, text, &e)))?;
        self.next_job += 1;
        self.turn.next_job = true;
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
            submitted_at_ms: self.now() as i64,
            slots: vec![SlotRecord::default(); spec.gang.max as usize],
            gang: id,
            version: 1,
            instances: None,
            history: Vec::new(),
            deployment: None,
        };
        tracing::info!(job = id, name = %spec.name, kind = spec.kind.name(), "job submitted");
        let what = format!("submitted: {} ({} × {})", spec.name, spec.gang.min, spec.gang.slot);
        self.jobs.insert(id, Job { record, spec, next: None });
        self.gang_job.insert(id, id);
        self.turn.jobs.insert(id);
        self.announce(id, what);
        self.schedule()?;
        Ok(id)
    }

    /// Stops a job's slots and ends it as cancelled.
    pub fn cancel(&mut self, id: u64) -> Result<JobView> {
        self.turn(|core| {
            let Some(job) = core.jobs.get(&id) else {
                return Err(CoordinatorError::NotFound(format!("no job {id}")));
            };
            let (gang, next) = (job.gang(), job.next_gang());
            if let Some(next) = next {
                core.end_deployment_gang(id, next, "the service was cancelled");
            }
            match core.engine.apply(Event::GangCancelled { gang: GangId(gang) }) {
                Ok(()) => core.schedule()?,
                Err(EngineError::UnknownGang(_)) => {
                    let state = core.job_state(id).unwrap_or(JobState::Cancelled);
                    return Err(CoordinatorError::Conflict(format!("job {id} already {state}")));
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

    /// The job of this name: the newest that has not ended, else the
    /// newest (a finished command job never hides a running service).
    pub fn resolve(&self, name: &str) -> Result<u64> {
        self.resolve_among(name, |_| true)
    }

    /// [`Core::resolve`] among the jobs `who` may see: a tenant's `etl` is
    /// theirs even where another queue has a newer one, whose existence
    /// they do not learn.
    pub fn resolve_for(&self, who: &super::auth::Principal, name: &str) -> Result<u64> {
        self.check_user(who)?;
        self.resolve_among(name, |queue| who.may_use_queue(queue))
    }

    fn resolve_among(&self, name: &str, visible: impl Fn(&str) -> bool) -> Result<u64> {
        let named = || self.jobs.values().rev().filter(|j| j.record.name == name && visible(&j.record.queue));
        named()
            .find(|j| self.job_state(j.record.id).is_some_and(|s| !s.is_final()))
            .or_else(|| named().next())
            .map(|j| j.record.id)
            .ok_or_else(|| CoordinatorError::NotFound(format!("no job named `{name}`")))
    }

    /// A job's spec as submitted.
    pub fn spec_text(&self, id: u64) -> Result<String> {
        let job = self.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
        Ok(job.record.spec_toml.clone())
    }

    /// Where a slot's output is: the agent's log service and the allocation.
    /// Where slot `slot`'s log is: the agent's address, the allocation, and
    /// the token that agent asks for.
    pub fn log_source(&self, job: u64, slot: u32) -> Result<(String, u64, String)> {
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
        Ok((agent.record.logs_address.clone(), s.alloc_id, self.logs_token(&s.node)))
    }

    /// The job's state: the engine's while its gang lives, the record's after.
    pub(super) fn job_state(&self, id: u64) -> Option<JobState> {
        let job = self.jobs.get(&id)?;
        Some(match self.engine.gang(GangId(job.gang())) {
            Some(g) if g.phase == GangPhase::Pending => JobState::Pending,
            Some(_) => JobState::Running,
            None => job.record.state,
        })
    }

    fn job_view(&self, id: u64) -> Option<JobView> {
        let job = self.jobs.get(&id)?;
        let record = &job.record;
        let live = self.engine.gang(GangId(job.gang()));
        let reason = match &live {
            Some(g) if g.phase == GangPhase::Pending => g.reason.clone().unwrap_or_default(),
            _ => record.reason.clone(),
        };
        let slot_view = |version: u32| {
            move |(i, s): (usize, &SlotRecord)| SlotView {
                index: i as u32,
                node: s.node.clone(),
                state: s.state,
                alloc_id: s.alloc_id,
                exit_code: s.exit_code,
                healthy: s.healthy,
                ports: s.ports.clone(),
                version,
            }
        };
        let mut slots: Vec<SlotView> = record.slots.iter().enumerate().map(slot_view(record.version)).collect();
        if let Some(d) = record.deployment.as_ref().filter(|_| job.next.is_some()) {
            slots.extend(d.slots.iter().enumerate().map(slot_view(d.version)));
        }
        Some(JobView {
            id,
            name: record.name.clone(),
            kind: record.kind.clone(),
            state: self.job_state(id)?,
            attempts: live.as_ref().map_or(record.attempts, |g| g.attempts),
            priority: record.priority.clone(),
            queue: record.queue.clone(),
            reason,
            pending_kind: live.as_ref().and_then(|g| g.reason_kind),
            desired_slots: job.spec.gang.max,
            slots,
            submitted_at_ms: record.submitted_at_ms,
            history: record.history.clone(),
            deployment: self.deployment_view(job),
        })
    }

    /// Changes the record of slot `slot` of engine gang `gang` (the job's
    /// current version, or the version a rolling update is starting).
    pub(super) fn set_slot(&mut self, gang: u64, slot: u32, f: impl FnOnce(&mut SlotRecord)) {
        let Some(id) = self.job_of(gang) else { return };
        let Some(job) = self.jobs.get_mut(&id) else { return };
        let slots = if job.gang() == gang {
            &mut job.record.slots
        } else if let Some(d) = job.record.deployment.as_mut().filter(|d| d.gang == gang) {
            &mut d.slots
        } else {
            return;
        };
        let i = slot as usize;
        if slots.len() <= i {
            // A service scaled up has more slots; one scaled down keeps no record of the rest.
            let max = self.engine.gang(GangId(gang)).map_or(0, |g| g.spec.max as usize);
            if i >= max {
                return;
            }
            slots.resize(i + 1, SlotRecord::default());
        }
        f(&mut slots[i]);
        self.turn.jobs.insert(id);
    }

    /// A slot's record, by engine gang.
    pub(super) fn slot(&self, gang: u64, slot: u32) -> Option<&SlotRecord> {
        let job = self.jobs.get(&self.job_of(gang)?)?;
        let slots = if job.gang() == gang {
            &job.record.slots
        } else {
            &job.record.deployment.as_ref().filter(|d| d.gang == gang)?.slots
        };
        slots.get(slot as usize)
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
            cohort_scheduler::SlotOutcome::Stopped | cohort_scheduler::SlotOutcome::Lost => SlotState::Stopped,
        }
    }
}
