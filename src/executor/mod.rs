//! `cohort executor --kind ...`: the process an agent starts for each slot.
//!
//! Started with `--alloc-dir DIR` (as agents do), it supervises the
//! workload: it runs the argv as its child in its own process group, waits
//! for it, writes how it ended to `DIR/exit.json`, and exits the same way.
//! The record outlives the agent, so an agent that restarts learns how an
//! executor ended while it was down. The supervisor ignores SIGTERM (a stop
//! reaches the workload through the process group, and the supervisor stays
//! to record its end); SIGKILL ends both. Without `--alloc-dir` it simply
//! replaces itself with the argv.
//!
//! `command` and `service` run an argv; `batch`, `stream` and `store`
//! arrive with the data plane.

mod kind;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use kind::{ExecutorKind, UnknownKind};

/// Where a supervisor records how its workload ended.
pub const EXIT_FILE: &str = "exit.json";

/// How a workload ended: its exit code, or the signal that ended it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

pub fn run(kind: ExecutorKind, alloc_dir: Option<&Path>, argv: &[String]) -> Result<i32> {
    match kind {
        ExecutorKind::Command | ExecutorKind::Service => {
            let Some((program, args)) = argv.split_first() else { bail!("executor: no command to run") };
            let Some(dir) = alloc_dir else {
                let err = std::process::Command::new(program).args(args).exec();
                bail!("executor: cannot run `{program}`: {err}")
            };
            supervise(dir, program, args)
        }
        other => bail!("executor kind `{other}` is not supported by this build yet"),
    }
}

fn supervise(dir: &Path, program: &str, args: &[String]) -> Result<i32> {
    const STOPS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    // SAFETY: setting signal dispositions of this single-threaded process.
    unsafe {
        for sig in STOPS {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // SAFETY: only signal(2), async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Ignored dispositions survive exec: give the workload the defaults back.
            for sig in STOPS {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let status = cmd
        .spawn()
        .with_context(|| format!("executor: cannot run `{program}`"))?
        .wait()
        .context("executor: cannot wait for the workload")?;
    let record = ExitRecord { code: status.code(), signal: status.signal() };
    let tmp = dir.join("exit.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&record)?).context("executor: cannot record the exit")?;
    std::fs::rename(&tmp, dir.join(EXIT_FILE)).context("executor: cannot record the exit")?;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
