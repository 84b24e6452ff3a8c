//! `cohort executor --kind ...`: the process an agent starts for each slot.
//!
//! `command` replaces itself with the job's argv (so signals, exit codes
//! and limits apply to the command directly). `batch`, `stream` and `store`
//! arrive with the data plane.

use std::os::unix::process::CommandExt;

use anyhow::{Result, bail};

pub fn run(kind: &str, argv: &[String]) -> Result<()> {
    match kind {
        "command" => {
            let Some((program, args)) = argv.split_first() else { bail!("executor: no command to run") };
            let err = std::process::Command::new(program).args(args).exec();
            bail!("executor: cannot run `{program}`: {err}")
        }
        "batch" | "stream" | "store" => {
            bail!("executor kind `{kind}` arrives with the data plane; this build runs `command`")
        }
        other => bail!("unknown executor kind `{other}` (expected command, batch, stream or store)"),
    }
}
