//! `cohort executor --kind ...`: the process an agent starts for each slot.
//!
//! `command` replaces itself with the job's argv (so signals, exit codes
//! and limits apply to the command directly). `batch`, `stream`, `store`
//! and `service` arrive with the data plane and services.

mod kind;

use std::os::unix::process::CommandExt;

use anyhow::{Result, bail};

pub use kind::{ExecutorKind, UnknownKind};

pub fn run(kind: ExecutorKind, argv: &[String]) -> Result<()> {
    match kind {
        ExecutorKind::Command => {
            let Some((program, args)) = argv.split_first() else { bail!("executor: no command to run") };
            let err = std::process::Command::new(program).args(args).exec();
            bail!("executor: cannot run `{program}`: {err}")
        }
        other => bail!("executor kind `{other}` is not supported by this build yet"),
    }
}
