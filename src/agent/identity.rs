//! Who command and service slots run as. An agent started as root never
//! runs them as root unless it was started with `--allow-root`: they run as
//! the queue's `run_as` user (from the coordinator), else the agent's
//! `--run-as` user, else `nobody`, each in a private scratch directory of
//! its own. An agent started as another user runs them as that user.
//! (Batch, stream and pool executors are Cohort's own code and run as the
//! agent.)

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// A user of this host.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The user called `name`, from the host's user database.
pub fn lookup(name: &str) -> Option<User> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes only into `pwd` and `buf`, whose sizes we pass.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found);
        (rc == 0 && !found.is_null()).then(|| User { name: name.to_string(), uid: pwd.pw_uid, gid: pwd.pw_gid })
    }
}

fn own_name() -> String {
    // SAFETY: geteuid cannot fail; getpwuid's result is read at once.
    unsafe {
        let uid = libc::geteuid();
        let pwd = libc::getpwuid(uid);
        if pwd.is_null() { format!("uid {uid}") } else { CStr::from_ptr((*pwd).pw_name).to_string_lossy().into_owned() }
    }
}

/// How this agent chooses the user of a slot.
#[derive(Clone, Debug)]
pub struct SlotUsers {
    /// The agent runs as root and may switch users.
    root: bool,
    allow_root: bool,
    /// Root: the user of slots whose queue names none (`None`: root itself).
    default: Option<User>,
    /// Not root: the agent's own user, the only one its slots can run as.
    own: String,
}

impl SlotUsers {
    pub fn new(run_as: Option<&str>, allow_root: bool) -> Result<SlotUsers> {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let own = own_name();
        if !root {
            if let Some(user) = run_as.filter(|u| *u != own) {
                bail!("--run-as {user}: this agent runs as {own} and cannot switch users (start it as root)");
            }
            return Ok(SlotUsers { root, allow_root, default: None, own });
        }
        let default = match run_as {
            Some("root") if !allow_root => bail!("--run-as root needs --allow-root"),
            Some("root") => None,
            Some(name) => Some(lookup(name).ok_or_else(|| anyhow::anyhow!("--run-as: no user `{name}` on this host"))?),
            None if allow_root => None,
            None => Some(lookup("nobody").ok_or_else(|| {
                anyhow::anyhow!("no `nobody` user on this host: pass --run-as USER (or --allow-root)")
            })?),
        };
        Ok(SlotUsers { root, allow_root, default, own })
    }

    /// What `cohort nodes` shows.
    pub fn describe(&self) -> String {
        match (&self.default, self.root) {
            (Some(user), _) => format!("{} (uid {})", user.name, user.uid),
            (None, true) => "root (--allow-root)".into(),
            (None, false) => format!("{} (the agent's user)", self.own),
        }
    }

    /// The user a slot runs as (`None`: the agent's own), or why it cannot run.
    pub fn for_slot(&self, requested: &str) -> Result<Option<User>, String> {
        if !self.root {
            return if requested.is_empty() || requested == self.own {
                Ok(None)
            } else {
                Err(format!("this agent runs as {} and cannot run slots as `{requested}`", self.own))
            };
        }
        match requested {
            "" => Ok(self.default.clone()),
            "root" if self.allow_root => Ok(None),
            "root" => Err("this agent runs slots as root only when started with --allow-root".into()),
            name => lookup(name).map(Some).ok_or_else(|| format!("no user `{name}` on this host")),
        }
    }
}

/// A private scratch directory for a slot run as `user`: its working
/// directory and `HOME`, outside the agent's data dir (which others cannot
/// enter), removed when the slot ends.
pub fn scratch_dir(user: &User, agent: &str, alloc: u64) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{PermissionsExt, chown};
    let parent = std::env::temp_dir().join("cohort-slots");
    std::fs::create_dir_all(&parent)?;
    // Others may pass through to their own directory, not list the rest.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711))?;
    let dir = parent.join(format!("{agent}-{}-{alloc}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    chown(&dir, Some(user.uid), Some(user.gid))?;
    Ok(dir)
}

pub fn remove_scratch(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_root_needs_permission() {
        let root = lookup("root").expect("every host has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup("no-such-user-here").is_none());
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let strict = SlotUsers::new(None, false).unwrap();
            assert!(strict.describe().starts_with("nobody"), "{}", strict.describe());
            assert_eq!(strict.for_slot("").unwrap().map(|u| u.name), Some("nobody".to_string()));
            assert!(strict.for_slot("root").unwrap_err().contains("--allow-root"));
            assert!(strict.for_slot("no-such-user-here").unwrap_err().contains("no user"));
            let lax = SlotUsers::new(None, true).unwrap();
            assert_eq!(lax.for_slot("").unwrap(), None, "root, as allowed");
            assert!(SlotUsers::new(Some("root"), false).is_err());
        }
    }
}
