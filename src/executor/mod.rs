//! `cohort executor --kind ...`: the process an agent starts for each slot.
//!
//! Started with `--alloc-dir DIR` (as agents do), it supervises the
//! workload: it runs the argv as its child in its own process group, waits
//! for it, writes how it ended to `DIR/exit.json`, and exits the same way.
//! The record outlives the agent, so an agent that restarts learns how an
//! executor ended while it was down. The supervisor survives SIGTERM: it
//! passes the signal on to the workload (even one that arrived before the
//! workload started) and stays to record its end; SIGKILL ends both.
//! Without `--alloc-dir` it simply replaces itself with the argv.
//!
//! `command` and `service` run an argv; `batch` runs a datafusion-distributed
//! worker (and a SQL job's driver) in a child of the supervisor
//! (`batch.rs`, `sql_job.rs`); `stream` runs a pipeline member
//! (`stream.rs`); `store` holds cached tables in memory (`store.rs`).

mod batch;
mod kind;
mod sql_job;
mod store;
mod stream;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

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
    /// Why the workload never ran (its program missing or not executable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn run(kind: ExecutorKind, alloc_dir: Option<&Path>, argv: &[String]) -> Result<i32> {
    match kind {
        ExecutorKind::Command | ExecutorKind::Service => {
            let Some((program, args)) = argv.split_first() else { bail!("executor: no command to run") };
            let Some(dir) = alloc_dir else {
                let err = std::process::Command::new(program).args(args).exec();
                bail!("executor: cannot run `{program}`: {err}")
            };
            supervise(dir, program, args, &[], RunAs::from_env()?.as_ref())
        }
        ExecutorKind::Batch => match alloc_dir {
            Some(dir) => supervise_itself(dir, kind, argv),
            None => batch::run(argv),
        },
        ExecutorKind::Stream => match alloc_dir {
            Some(dir) => supervise_itself(dir, kind, argv),
            None => stream::run(argv),
        },
        ExecutorKind::Store => match alloc_dir {
            Some(dir) => supervise_itself(dir, kind, argv),
            None => store::run(argv),
        },
    }
}

/// Runs `cohort executor --kind KIND -- argv` (the workload, without an
/// allocation directory) under this supervisor.
fn supervise_itself(dir: &Path, kind: ExecutorKind, argv: &[String]) -> Result<i32> {
    let exe = std::env::current_exe().context("executor: cannot find the cohort binary")?;
    let mut args = vec!["executor".to_string(), "--kind".into(), kind.as_str().into(), "--".into()];
    args.extend(argv.iter().cloned());
    supervise(dir, &exe.to_string_lossy(), &args, &[("COHORT_ALLOC_DIR", dir)], None)
}

/// A stop signal the supervisor received, and the workload to pass it to.
static STOP: AtomicI32 = AtomicI32::new(0);
static WORKLOAD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: i32) {
    STOP.store(sig, Ordering::SeqCst);
    let pid = WORKLOAD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The user a command or service workload runs as, from its agent:
/// `uid:gid:name` in [`RUN_AS_ENV`], its scratch dir in [`WORKDIR_ENV`].
pub const RUN_AS_ENV: &str = "COHORT_RUN_AS";
pub const WORKDIR_ENV: &str = "COHORT_WORKDIR";

struct RunAs {
    uid: u32,
    gid: u32,
    name: String,
    workdir: std::path::PathBuf,
}

impl RunAs {
    fn from_env() -> Result<Option<RunAs>> {
        let Ok(spec) = std::env::var(RUN_AS_ENV) else { return Ok(None) };
        let mut parts = spec.splitn(3, ':');
        let (Some(uid), Some(gid), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("executor: {RUN_AS_ENV} is not uid:gid:name")
        };
        let workdir = std::env::var_os(WORKDIR_ENV).map(Into::into).context("executor: no workdir to run in")?;
        Ok(Some(RunAs { uid: uid.parse()?, gid: gid.parse()?, name: name.to_string(), workdir }))
    }
}

fn supervise(dir: &Path, program: &str, args: &[String], env: &[(&str, &Path)], run_as: Option<&RunAs>) -> Result<i32> {
    // The supervisor stays to record the workload's end: a stop is passed on,
    // even one that arrives before the workload exists. (Caught signals are
    // reset by exec, so the workload gets the default dispositions.)
    // SAFETY: installing a handler that only does async-signal-safe work.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, on_stop as *const () as libc::sighandler_t);
        }
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(env.iter().copied()).env_remove(RUN_AS_ENV).env_remove(WORKDIR_ENV);
    if let Some(user) = run_as {
        // The supervisor keeps the agent's user, to record the exit in its dir;
        // std drops supplementary groups with the switch.
        cmd.uid(user.uid)
            .gid(user.gid)
            .current_dir(&user.workdir)
            .env("HOME", &user.workdir)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // A shell's codes: 127 for a program not found, 126 for one that cannot run.
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            // The same errors come from a run-as user's missing scratch dir: say which.
            let error = Some(match run_as.filter(|user| !user.workdir.is_dir()) {
                Some(user) => format!("cannot run `{program}`: its scratch dir {} is missing", user.workdir.display()),
                None => format!("cannot run `{program}`: {e}"),
            });
            record_exit(dir, &ExitRecord { code: Some(code), signal: None, error })?;
            return Ok(code);
        }
    };
    WORKLOAD.store(child.id() as i32, Ordering::SeqCst);
    let early = STOP.load(Ordering::SeqCst);
    if early != 0 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, early) };
    }
    let status = child.wait().context("executor: cannot wait for the workload")?;
    record_exit(dir, &ExitRecord { code: status.code(), signal: status.signal(), error: None })?;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Writes how the workload ended where its agent reads it, whole or not at all.
fn record_exit(dir: &Path, record: &ExitRecord) -> Result<()> {
    let tmp = dir.join("exit.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record)?).context("executor: cannot record the exit")?;
    std::fs::rename(&tmp, dir.join(EXIT_FILE)).context("executor: cannot record the exit")
}
