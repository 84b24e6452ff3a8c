//! Services: instances kept healthy, scaled, reached through their host
//! ports, and replaced by rolling updates that never hang.
//!
//! A rolling update runs the new version as a second engine gang beside the
//! old one. New instances start at once (as many as fit); old instances are
//! stopped only as new ones turn healthy, so that at least `min_healthy` of
//! `instances` are healthy throughout. When every new instance is healthy
//! the old gang is cancelled and the new one becomes the service; if that
//! has not happened by the deadline, the new gang is cancelled, the old one
//! is scaled back, and the reason is kept (Marathon's deployments without
//! the hang).
//!
//! A service or pipeline pauses: its gang is cancelled (instances stop
//! with their grace period) while the job stays, `paused`; resuming starts
//! a new gang of the same spec.

use std::collections::BTreeMap;

use cohort_scheduler::{EngineError, Event, GangId};

use super::error::{CoordinatorError, Result};
use super::model::{DeploymentView, Endpoint, JobState, JobView, SlotState};
use super::{Core, Job, internal};
use crate::coordinator::store::{DeploymentRecord, DeploymentState, JobRecord, SlotRecord};
use crate::spec::JobSpec;

/// A service's spec with its scaled instance count.
pub(super) fn apply_scale(spec: &mut JobSpec, record: &JobRecord) {
    if let Some(n) = record.instances
        && spec.kind.service().is_some()
    {
        spec.gang.max = n;
    }
}

/// Healthy instances among slot records.
fn healthy(slots: &[SlotRecord]) -> u32 {
    slots.iter().filter(|s| s.state.is_live() && s.healthy == Some(true)).count() as u32
}

impl Core {
    /// The live service of this name, if any.
    pub(super) fn running_service(&self, name: &str) -> Option<u64> {
        self.jobs
            .values()
            .find(|j| j.record.name == name && j.spec.kind.service().is_some() && !j.record.state.is_final())
            .map(|j| j.record.id)
            .filter(|&id| self.job_state(id).is_some_and(|s| !s.is_final()))
    }

    /// Starts a rolling update of service `id` to `spec`.
    pub(super) fn start_deployment(&mut self, id: u64, file: &str, text: &str, spec: JobSpec) -> Result<()> {
        let job = &self.jobs[&id];
        if let Some(d) = job.record.deployment.as_ref().filter(|d| d.state == DeploymentState::Rolling) {
            return Err(CoordinatorError::Conflict(format!(
                "a rolling update of `{}` to version {} is in progress; wait for it to finish or roll back",
                job.record.name, d.version
            )));
        }
        let service = spec.kind.service().expect("a service spec");
        let (instances, deadline) = (service.instances, service.update_deadline);
        let version = job.record.version + 1;
        let gang = self.next_job;
        self.engine
            .apply(Event::GangSubmitted { gang: GangId(gang), spec: spec.gang.clone() })
            .map_err(|e| CoordinatorError::InvalidInput(format!("{file}: {e}")))?;
        self.next_job += 1;
        self.turn.next_job = true;
        self.gang_job.insert(gang, id);
        let now = self.now() as i64;
        let deployment = DeploymentRecord {
            state: DeploymentState::Rolling,
            gang,
            version,
            file: file.to_string(),
            spec_toml: text.to_string(),
            instances,
            started_ms: now,
            deadline_ms: now + deadline.as_millis() as i64,
            reason: String::new(),
            slots: vec![SlotRecord::default(); instances as usize],
        };
        tracing::info!(job = id, version, instances, "rolling update started");
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.record.deployment = Some(deployment);
        job.next = Some(spec);
        self.turn.jobs.insert(id);
        self.announce(id, format!("rolling update to version {version} started ({instances} instances)"));
        self.schedule()
    }

    /// Moves every rolling update on: old instances stop as new ones turn
    /// healthy; done, or rolled back at the deadline.
    pub(super) fn roll_deployments(&mut self) -> Result<()> {
        let now = self.now() as i64;
        let rolling: Vec<u64> = self.jobs.values().filter(|j| j.next.is_some()).map(|j| j.record.id).collect();
        for id in rolling {
            let job = &self.jobs[&id];
            let d = job.record.deployment.as_ref().expect("a job with a next version has a deployment");
            let service = job.next.as_ref().and_then(|n| n.kind.service()).expect("a service");
            let n = d.instances;
            let need = (service.min_healthy * n as f64).ceil() as u32;
            let (healthy_new, old_gang, new_gang) = (healthy(&d.slots), job.gang(), d.gang);
            let old_max = self.engine.gang(GangId(old_gang)).map_or(0, |g| g.spec.max);
            if healthy_new >= n {
                self.finish_deployment(id)?;
            } else if now > d.deadline_ms {
                let why = format!(
                    "version {} was not healthy within its update deadline ({healthy_new} of {n} instances healthy); rolled back",
                    d.version
                );
                self.end_deployment_gang(id, new_gang, &why);
                let back_to = self.jobs[&id].spec.gang.max;
                if old_max != back_to {
                    self.resize(old_gang, back_to)?;
                }
                self.update_job(id, |r| r.reason = why.clone());
                self.announce(id, why);
            } else {
                // Stop old instances only as far as the new ones make up for them.
                let target = need.saturating_sub(healthy_new).max(1);
                if target < old_max {
                    self.resize(old_gang, target)?;
                }
            }
        }
        self.schedule()
    }

    /// Every new instance is healthy: the new version becomes the service.
    fn finish_deployment(&mut self, id: u64) -> Result<()> {
        let job = self.jobs.get_mut(&id).expect("a rolling job");
        let old_gang = job.gang();
        let next = job.next.take().expect("a next version");
        let d = job.record.deployment.as_mut().expect("a deployment");
        d.state = DeploymentState::Done;
        d.reason = format!("all {} instances of version {} healthy", d.instances, d.version);
        let slots = std::mem::take(&mut d.slots);
        let (gang, version, file, text) = (d.gang, d.version, d.file.clone(), d.spec_toml.clone());
        job.record.gang = gang;
        job.record.version = version;
        job.record.slots = slots;
        job.record.file = file;
        job.record.spec_toml = text;
        job.record.instances = None;
        job.record.priority = next.gang.priority.clone();
        job.spec = next;
        self.turn.jobs.insert(id);
        tracing::info!(job = id, version, "rolling update done");
        self.cancel_gang(old_gang)?;
        self.announce(id, format!("rolling update to version {version} done"));
        Ok(())
    }

    /// Ends the new version of a rolling update (rolled back, or the service cancelled).
    pub(super) fn end_deployment_gang(&mut self, id: u64, gang: u64, why: &str) {
        if let Err(e) = self.cancel_gang(gang) {
            tracing::warn!(job = id, gang, error = %e, "cannot cancel the new version");
        }
        let job = self.jobs.get_mut(&id).expect("a rolling job");
        job.next = None;
        if let Some(d) = job.record.deployment.as_mut() {
            d.state = DeploymentState::RolledBack;
            d.reason = why.to_string();
        }
        self.turn.jobs.insert(id);
    }

    fn cancel_gang(&mut self, gang: u64) -> Result<()> {
        match self.engine.apply(Event::GangCancelled { gang: GangId(gang) }) {
            Ok(()) | Err(EngineError::UnknownGang(_)) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    fn resize(&mut self, gang: u64, max: u32) -> Result<()> {
        self.engine.apply(Event::GangResized { gang: GangId(gang), max }).map_err(internal)
    }

    pub(super) fn deployment_view(&self, job: &Job) -> Option<DeploymentView> {
        let d = job.record.deployment.as_ref()?;
        // Once done, the new version is the service's own slots.
        let (healthy_new, healthy_old) = match d.state {
            DeploymentState::Rolling => (healthy(&d.slots), healthy(&job.record.slots)),
            DeploymentState::Done => (healthy(&job.record.slots), 0),
            DeploymentState::RolledBack => (0, healthy(&job.record.slots)),
        };
        Some(DeploymentView {
            state: d.state,
            version: d.version,
            instances: d.instances,
            healthy_new,
            healthy_old,
            started_ms: d.started_ms,
            deadline_ms: d.deadline_ms,
            reason: d.reason.clone(),
        })
    }

    /// `cohort scale`: a service's instance count. The other long-running
    /// kinds size themselves: a pipeline within its `[parallelism]`, the
    /// SQL pool and the stores with their load.
    pub fn scale_service(&mut self, id: u64, instances: u32) -> Result<JobView> {
        if let Some(job) = self.jobs.get(&id)
            && !matches!(job.spec.kind, crate::spec::JobKind::Service { .. })
        {
            return Err(CoordinatorError::InvalidInput(format!(
                "job {id} is a {} job; only services scale",
                job.record.kind
            )));
        }
        self.scale(id, instances)
    }

    /// Sets a long-running job's instance count (a rolling update in progress takes it too).
    pub fn scale(&mut self, id: u64, instances: u32) -> Result<JobView> {
        self.turn(|core| {
            let job = core.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
            if job.spec.kind.service().is_none() {
                return Err(CoordinatorError::InvalidInput(format!(
                    "job {id} is a {} job; only services scale",
                    job.record.kind
                )));
            }
            if !(1..=10_000).contains(&instances) {
                return Err(CoordinatorError::InvalidInput(format!(
                    "instances must be between 1 and 10000, got {instances} (cancel the service to stop it)"
                )));
            }
            if core.job_state(id).is_none_or(|s| s.is_final()) {
                return Err(CoordinatorError::Conflict(format!("job {id} has ended")));
            }
            let (gang, next) = (job.gang(), job.next_gang());
            core.resize(gang, instances)?;
            let job = core.jobs.get_mut(&id).expect("checked above");
            job.spec.gang.max = instances;
            job.record.instances = Some(instances);
            job.record.slots.truncate(instances as usize);
            if let Some(next) = next {
                core.resize(next, instances)?;
                let job = core.jobs.get_mut(&id).expect("checked above");
                if let Some(spec) = job.next.as_mut() {
                    spec.gang.max = instances;
                }
                if let Some(d) = job.record.deployment.as_mut() {
                    d.instances = instances;
                    d.slots.truncate(instances as usize);
                }
            }
            core.turn.jobs.insert(id);
            core.announce(id, format!("scaled to {instances} instance(s)"));
            core.schedule()?;
            core.job(id)
        })
    }

    /// Where a service's data is cached now (node name, weight): the
    /// instances it places from now on go there first.
    pub fn locate(&mut self, id: u64, locality: Vec<(String, u32)>) -> Result<()> {
        self.turn(|core| {
            let job = core.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
            let gangs: Vec<u64> = std::iter::once(job.gang()).chain(job.next_gang()).collect();
            for gang in gangs {
                let located = Event::GangLocated { gang: GangId(gang), locality: locality.clone() };
                core.engine.apply(located).map_err(internal)?;
            }
            core.jobs.get_mut(&id).expect("checked above").spec.gang.locality = locality;
            Ok(())
        })
    }

    /// Stops a service's or pipeline's instances (each gets SIGTERM and its
    /// grace period: a pipeline member commits what it has) and keeps the
    /// job, `paused`, until [`Core::resume`].
    pub fn pause(&mut self, id: u64) -> Result<JobView> {
        self.turn(|core| {
            let job = core.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
            if job.spec.kind.service().is_none() {
                return Err(CoordinatorError::InvalidInput(format!(
                    "job {id} is a {} job; only services and pipelines pause (cancel ends a job)",
                    job.record.kind
                )));
            }
            match core.job_state(id) {
                Some(JobState::Paused) => {
                    return Err(CoordinatorError::Conflict(format!("job {id} is already paused")));
                }
                Some(s) if s.is_final() => return Err(CoordinatorError::Conflict(format!("job {id} has ended ({s})"))),
                _ => {}
            }
            if job.next_gang().is_some() {
                return Err(CoordinatorError::Conflict(format!(
                    "a rolling update of job {id} is in progress; wait for it to finish"
                )));
            }
            let gang = job.gang();
            core.engine.apply(Event::GangCancelled { gang: GangId(gang) }).map_err(internal)?;
            core.schedule()?;
            // The engine ended the gang as cancelled; the job lives on.
            core.update_job(id, |r| {
                r.state = JobState::Paused;
                r.reason = "paused; `resume` starts it again".into();
                if let Some(last) = r.history.last_mut().filter(|e| e.outcome == "cancelled") {
                    last.outcome = "paused".into();
                    last.reason = "`pause`: its instances stopped with their grace period".into();
                }
            });
            core.announce(id, "paused".into());
            core.job(id)
        })
    }

    /// Starts a paused job again, as a new gang of the same spec.
    pub fn resume(&mut self, id: u64) -> Result<JobView> {
        self.turn(|core| {
            let job = core.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
            if job.record.state != JobState::Paused {
                let state = core.job_state(id).unwrap_or(job.record.state);
                return Err(CoordinatorError::Conflict(format!("job {id} is {state}, not paused")));
            }
            let gang = core.next_job;
            let spec = job.spec.gang.clone();
            let slots = spec.max as usize;
            core.engine.apply(Event::GangSubmitted { gang: GangId(gang), spec }).map_err(internal)?;
            core.next_job += 1;
            core.turn.next_job = true;
            core.gang_job.insert(gang, id);
            core.update_job(id, |r| {
                r.gang = gang;
                r.state = JobState::Pending;
                r.reason = String::new();
                r.slots = vec![SlotRecord::default(); slots];
            });
            core.announce(id, "resumed".into());
            core.schedule()?;
            core.job(id)
        })
    }

    /// Where a job's healthy slots are reached (for a service, both
    /// versions during a rolling update).
    pub fn endpoints(&self, id: u64) -> Result<Vec<Endpoint>> {
        let job = self.jobs.get(&id).ok_or_else(|| CoordinatorError::NotFound(format!("no job {id}")))?;
        if job.spec.kind.ports().is_empty() {
            return Err(CoordinatorError::InvalidInput(format!(
                "job {id} is a {} job: its slots serve no ports, so it has no endpoints",
                job.record.kind
            )));
        }
        let mut slots: Vec<(u32, &SlotRecord)> =
            job.record.slots.iter().enumerate().map(|(i, s)| (i as u32, s)).collect();
        if job.next.is_some()
            && let Some(d) = &job.record.deployment
        {
            slots.extend(d.slots.iter().enumerate().map(|(i, s)| (i as u32, s)));
        }
        Ok(slots
            .into_iter()
            .filter(|(_, s)| s.state == SlotState::Running && s.healthy == Some(true))
            .map(|(slot, s)| Endpoint {
                slot,
                node: s.node.clone(),
                host: self.agents.values().find(|a| a.record.name == s.node).map_or_else(
                    || s.node.clone(),
                    |a| if a.record.address.is_empty() { a.record.name.clone() } else { a.record.address.clone() },
                ),
                ports: s.ports.clone(),
            })
            .collect())
    }

    /// An agent's word on an instance's health.
    pub(super) fn instance_health(&mut self, alloc: u64, healthy: bool, detail: &str) {
        let Some(a) = self.allocs.get(&alloc).cloned() else { return };
        let gang = if a.gang == 0 { a.job } else { a.gang };
        let was = self.slot(gang, a.slot).and_then(|s| s.healthy);
        if was == Some(healthy) {
            return;
        }
        self.set_slot(gang, a.slot, |s| {
            if s.alloc_id == alloc {
                s.healthy = Some(healthy);
            }
        });
        if let Some(job) = self.job_of(gang) {
            let how = if healthy { "healthy" } else { "unhealthy" };
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            self.announce(job, format!("instance {} on {} {how}{detail}", a.slot, a.node));
        }
    }

    /// Host ports for a new instance on `node`: free ones of the agent's
    /// range, taken round the range so a port just released is not reused at once.
    pub(super) fn assign_ports(&mut self, node: u32, names: &[String]) -> BTreeMap<String, u16> {
        if names.is_empty() {
            return BTreeMap::new();
        }
        let Some(agent) = self.agents.get(&node) else { return BTreeMap::new() };
        let (first, last) = (agent.record.port_first, agent.record.port_last);
        let name = agent.record.name.clone();
        let used: Vec<u16> =
            self.allocs.values().filter(|a| a.node == name).flat_map(|a| a.ports.values().copied()).collect();
        let span = (last - first) as u32 + 1;
        let cursor = self.port_cursor.entry(node).or_insert(0);
        let mut out = BTreeMap::new();
        let mut tried = 0;
        while out.len() < names.len() && tried < span {
            let port = first + ((*cursor + tried) % span) as u16;
            tried += 1;
            if !used.contains(&port) {
                out.insert(names[out.len()].clone(), port);
            }
        }
        *cursor = (*cursor + tried) % span;
        out
    }
}
