//! Why the coordinator refused or failed a request. Each front door maps
//! these kinds to its own status codes (gRPC, Flight SQL, HTTP); the
//! message is written for the person who sent the request.

use crate::coordinator::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request itself is wrong: a bad spec, a bad name. Retrying it unchanged fails again.
    #[error("{0}")]
    InvalidInput(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the current state (a job that already ended, a node that is lost).
    #[error("{0}")]
    Conflict(String),
    /// The state store failed; the coordinator restarts from what it holds.
    #[error("the state store failed: {0}")]
    Store(#[from] StoreError),
    /// The coordinator is stopping or restarting; retry shortly.
    #[error("{0}")]
    Unavailable(String),
    /// No token, or one that is unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A bug: state that should be impossible.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
