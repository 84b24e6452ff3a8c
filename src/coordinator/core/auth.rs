//! Who may do what: bearer tokens and the rules they carry.
//!
//! A token is `cohort_<id>_<secret>`; only its SHA-256 is stored, so the
//! store never holds a usable secret. Roles, after Kubernetes' RBAC and
//! Nomad's ACLs, kept to three:
//!
//! - `admin`: everything (nodes, drain, tokens, every queue);
//! - `submit`: submit, cancel, read and watch the jobs, services and
//!   pipelines of its queues only;
//! - `agent`: join the cluster as an agent (a join token), nothing else.
//!
//! A joined agent is known by its certificate ([`Principal::Node`]), not by
//! a token: it may register and attach as the node its certificate names.
//!
//! Every executor gets a token of its own job (`COHORT_TOKEN`), derived
//! from the cluster's secret: it acts as `submit` on the job's queue while
//! the job lives, and is refused once the job has ended.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Core;
use super::error::{CoordinatorError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Submit,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submit => "submit",
            Role::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        match text {
            "admin" => Ok(Role::Admin),
            "submit" => Ok(Role::Submit),
            "agent" => Ok(Role::Agent),
            other => {
                Err(CoordinatorError::InvalidInput(format!("unknown role `{other}` (expected admin, submit or agent)")))
            }
        }
    }
}

/// A token as stored: its hash, never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    pub role: Role,
    /// `submit` tokens: the queues they may use.
    pub queues: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked: bool,
    pub description: String,
}

/// Who is calling, as its token says.
#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    Admin {
        token: String,
    },
    /// A `submit` token, or an executor's job token.
    Tenant {
        token: String,
        queues: BTreeSet<String>,
    },
    Agent {
        token: String,
    },
    /// An agent, by the certificate the cluster CA gave it when it joined.
    Node {
        name: String,
    },
}

impl Principal {
    /// How errors and the audit log name the caller: `token 3f9a0c1d (submit: team-a)`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Admin { token } => format!("{token} (admin)"),
            Principal::Tenant { token, queues } => {
                format!("{token} (submit: {})", queues.iter().cloned().collect::<Vec<_>>().join(", "))
            }
            Principal::Agent { token } => format!("{token} (agent)"),
            Principal::Node { name } => format!("agent {name} (certificate)"),
        }
    }

    pub fn may_use_queue(&self, queue: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Tenant { queues, .. } => queues.contains(queue),
            Principal::Agent { .. } | Principal::Node { .. } => false,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a client without a token is told.
pub const HOW_TO_GET_A_TOKEN: &str = "no token: pass --token or set COHORT_TOKEN (`cohort up` writes one to \
     ~/.config/cohort/config.toml, which the CLI reads; a standalone coordinator writes admin.token to its data \
     directory); an admin creates more with `cohort token create`";

/// The prefix every token starts with.
const PREFIX: &str = "cohort_";
/// Job tokens: `cohort_job<id>_<mac>`.
const JOB_PREFIX: &str = "cohort_job";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A fresh token from 16 random bytes: `(id, token)`.
pub fn new_token(random: &[u8; 16]) -> (String, String) {
    let id = hex(&random[..4]);
    let secret = hex(&random[4..]);
    (id.clone(), format!("{PREFIX}{id}_{secret}"))
}

/// The token of job `job`'s executors: a keyed hash of the cluster secret.
pub fn job_token(secret: &[u8; 32], job: u64) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(format!("job:{job}:").as_bytes());
    format!("{JOB_PREFIX}{job}_{}", &hex(&h.finalize())[..32])
}

/// Equal without an early exit, so a guess's timing says nothing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Core {
    /// Who `token` is, or why it is refused.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let unknown = || CoordinatorError::Unauthenticated("the token is not one this cluster issued".into());
        if let Some(rest) = token.strip_prefix(JOB_PREFIX) {
            let job: u64 = rest.split('_').next().and_then(|id| id.parse().ok()).ok_or_else(unknown)?;
            if !same(token, &job_token(&self.settings.token_secret, job)) {
                return Err(unknown());
            }
            let record = self.jobs.get(&job).map(|j| &j.record).ok_or_else(unknown)?;
            if record.state.is_final() {
                return Err(CoordinatorError::Unauthenticated(format!("the token of job {job} ended with the job")));
            }
            return Ok(Principal::Tenant {
                token: format!("job {job}"),
                queues: BTreeSet::from([record.queue.clone()]),
            });
        }
        let id = token.strip_prefix(PREFIX).and_then(|rest| rest.split('_').next()).ok_or_else(unknown)?;
        let record = self.tokens.get(id).filter(|r| same(&r.hash, &hash(token))).ok_or_else(unknown)?;
        if record.revoked {
            return Err(CoordinatorError::Unauthenticated(format!("token {id} was revoked")));
        }
        if let Some(expires) = record.expires_ms.filter(|&e| e <= self.now_ms()) {
            return Err(CoordinatorError::Unauthenticated(format!(
                "token {id} expired at {}",
                crate::json::utc_minute(expires)
            )));
        }
        let token = format!("token {id}");
        Ok(match record.role {
            Role::Admin => Principal::Admin { token },
            Role::Submit => Principal::Tenant { token, queues: record.queues.iter().cloned().collect() },
            Role::Agent => Principal::Agent { token },
        })
    }

    /// Stores a token the caller generated (with [`new_token`]); returns its record.
    pub fn create_token(
        &mut self,
        token: &str,
        role: Role,
        queues: Vec<String>,
        ttl_ms: Option<u64>,
        description: String,
    ) -> Result<TokenRecord> {
        self.turn(|core| {
            let id = token
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('_').next())
                .filter(|id| !id.is_empty() && !id.starts_with("job"))
                .ok_or_else(|| CoordinatorError::Internal("a malformed new token".into()))?;
            if core.tokens.contains_key(id) {
                return Err(CoordinatorError::Conflict(format!("token id {id} exists; try again")));
            }
            match role {
                Role::Submit if queues.is_empty() || queues.iter().any(|q| q.trim().is_empty()) => {
                    return Err(CoordinatorError::InvalidInput(
                        "a submit token needs one or more queues (--queue NAME)".into(),
                    ));
                }
                Role::Admin | Role::Agent if !queues.is_empty() => {
                    return Err(CoordinatorError::InvalidInput(format!(
                        "{} tokens are not bound to queues; drop --queue",
                        role.as_str()
                    )));
                }
                _ => {}
            }
            let now = core.now_ms();
            let record = TokenRecord {
                id: id.to_string(),
                hash: hash(token),
                role,
                queues,
                created_ms: now,
                expires_ms: ttl_ms.map(|ttl| now.saturating_add(ttl.min(i64::MAX as u64) as i64)),
                revoked: false,
                description,
            };
            core.tokens.insert(record.id.clone(), record.clone());
            core.turn.tokens.insert(record.id.clone());
            Ok(record)
        })
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.tokens.values().cloned().collect()
    }

    /// Whether any token was ever issued (a new cluster issues its first).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Refuses `id` from now on.
    pub fn revoke_token(&mut self, id: &str) -> Result<TokenRecord> {
        self.turn(|core| {
            let record = core.tokens.get_mut(id).ok_or_else(|| CoordinatorError::NotFound(format!("no token {id}")))?;
            if record.revoked {
                return Err(CoordinatorError::Conflict(format!("token {id} is already revoked")));
            }
            record.revoked = true;
            let record = record.clone();
            core.turn.tokens.insert(record.id.clone());
            Ok(record)
        })
    }

    /// The token of job `job`'s executors.
    pub(super) fn job_token(&self, job: u64) -> String {
        job_token(&self.settings.token_secret, job)
    }

    /// What the coordinator presents to read agent `node`'s logs.
    pub(super) fn logs_token(&self, node: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.settings.token_secret);
        h.update(format!("logs:{node}:").as_bytes());
        format!("cohort_logs_{}", &hex(&h.finalize())[..32])
    }

    /// Admins only.
    pub fn check_admin(&self, who: &Principal) -> Result<()> {
        if who.is_admin() {
            Ok(())
        } else {
            Err(CoordinatorError::Forbidden(format!("{who} may not do this: it needs an admin token")))
        }
    }

    /// People and executors, not agents.
    pub fn check_user(&self, who: &Principal) -> Result<()> {
        match who {
            Principal::Agent { .. } => {
                Err(CoordinatorError::Forbidden(format!("{who} is a join token: it only joins agents")))
            }
            Principal::Node { .. } => Err(CoordinatorError::Forbidden(format!("{who} may only act as that agent"))),
            _ => Ok(()),
        }
    }

    /// Asking for an agent's certificate: a join token (or an admin).
    pub fn check_join(&self, who: &Principal) -> Result<()> {
        match who {
            Principal::Agent { .. } | Principal::Admin { .. } => Ok(()),
            _ => Err(CoordinatorError::Forbidden(format!("{who} may not join agents: it needs a join token"))),
        }
    }

    /// Registering node `name`: the agent whose certificate names it (or an admin).
    pub fn check_agent(&self, who: &Principal, name: &str) -> Result<()> {
        match who {
            Principal::Node { name: certified } if certified == name => Ok(()),
            Principal::Admin { .. } => Ok(()),
            Principal::Node { .. } => {
                Err(CoordinatorError::Forbidden(format!("{who} may not register as node `{name}`")))
            }
            Principal::Agent { .. } => Err(CoordinatorError::Forbidden(format!(
                "{who} is a join token: agents join with it (`Cluster.Join`), then register with the certificate they get"
            ))),
            Principal::Tenant { .. } => {
                Err(CoordinatorError::Forbidden(format!("{who} may not register agents: it needs a join token")))
            }
        }
    }

    /// Attaching as node `node`: the agent registered under that name.
    pub fn check_node(&self, who: &Principal, node: u32) -> Result<()> {
        let name = self
            .agents
            .get(&node)
            .map(|a| a.record.name.clone())
            .ok_or_else(|| CoordinatorError::NotFound(format!("node {node} is not registered")))?;
        self.check_agent(who, &name)
    }

    /// Whether `who` may read and change job `job` (by its queue).
    pub fn check_job(&self, who: &Principal, job: u64) -> Result<()> {
        self.check_user(who)?;
        let Some(queue) = self.jobs.get(&job).map(|j| &j.record.queue) else {
            return Err(CoordinatorError::NotFound(format!("no job {job}")));
        };
        self.check_queue(who, queue)
            .map_err(|_| CoordinatorError::Forbidden(format!("{who} may not use job {job}: it is in queue `{queue}`")))
    }

    /// Whether `who` may submit to `queue`.
    pub fn check_queue(&self, who: &Principal, queue: &str) -> Result<()> {
        self.check_user(who)?;
        if who.may_use_queue(queue) {
            Ok(())
        } else {
            Err(CoordinatorError::Forbidden(format!("{who} may not use queue `{queue}`")))
        }
    }

    /// The queue a job is in, for filtering what a tenant sees.
    pub fn job_queue(&self, job: u64) -> Option<&str> {
        self.jobs.get(&job).map(|j| j.record.queue.as_str())
    }
}

/// One accepted change: who made it, what, when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub who: String,
    pub what: String,
}

/// Audit entries kept in memory (all are stored).
pub const AUDIT_KEPT: usize = 1000;

impl Core {
    /// Records an accepted change in the audit log (stored, and logged).
    pub fn audit(&mut self, who: &str, what: &str) -> Result<()> {
        self.turn(|core| {
            let entry = AuditEntry { at_ms: core.now_ms(), who: who.to_string(), what: what.to_string() };
            tracing::info!(target: "audit", who, what, "accepted");
            if core.audit.len() == AUDIT_KEPT {
                core.audit.pop_front();
            }
            core.audit.push_back(entry.clone());
            core.turn.audit.push(entry);
            Ok(())
        })
    }

    /// The newest `limit` entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Vec<AuditEntry> {
        self.audit.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_and_compared_whole() {
        let (id, token) = new_token(&[7; 16]);
        assert_eq!(token, format!("cohort_{id}_{}", "07".repeat(12)));
        assert_eq!(hash(&token).len(), 64);
        assert!(same(&hash(&token), &hash(&token)));
        assert!(!same(&hash(&token), &hash(&format!("{token}x"))));
        let a = job_token(&[1; 32], 7);
        assert!(a.starts_with("cohort_job7_"));
        assert_ne!(a, job_token(&[2; 32], 7), "the secret matters");
        assert_ne!(a, job_token(&[1; 32], 8), "the job matters");
    }
}
