//! Outputs that appear whole or not at all. A job's writes go to a hidden
//! sibling of their target (`/out/.report.cohort-7-1/` for `/out/report/`)
//! and are moved in only after every statement succeeded. A job that fails
//! or is preempted leaves at most that hidden sibling, which its next
//! attempt sweeps away.
//!
//! A target that does not exist yet appears file by file at commit (one
//! rename each on a local disk, a copy each on an object store); readers
//! that list it mid-commit can see part of a commit, never a half-written
//! file. Moves go through the object store the query wrote with, so local
//! paths and `s3://` behave alike.

use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{Error, Result};

/// A write staged beside its target.
pub struct Staged {
    store: Arc<dyn ObjectStore>,
    /// Where the query writes: hand this to COPY.
    pub staging_url: String,
    staging: Path,
    target: Path,
    /// The target as the user wrote it, for messages.
    pub target_url: String,
    single_file: bool,
    local_dir: Option<std::path::PathBuf>,
}

impl Staged {
    /// Stages a write to `target` (an absolute path or URL, a directory
    /// when it ends in `/` or has no extension, as DataFusion's COPY
    /// decides). `job` names the writer and `attempt` this try: stale
    /// staging of the same job's earlier attempts is removed first.
    pub async fn beside(target: &str, job: &str, attempt: u32, runtime: &RuntimeEnv) -> Result<Staged> {
        let parsed = ListingTableUrl::parse(target)?;
        let store = runtime.object_store(parsed.object_store())?;
        let trimmed = target.trim_end_matches('/');
        let (parent, name) = trimmed
            .rsplit_once('/')
            .ok_or_else(|| Error::Invalid(format!("cannot write to '{target}': it names no file or directory")))?;
        let single_file = !parsed.is_collection() && name.rsplit_once('.').is_some_and(|(stem, _)| !stem.is_empty());
        let stale_prefix = format!(".{name}.cohort-{job}-");
        let staged_name = if single_file {
            let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
            format!("{stale_prefix}{attempt}.{ext}")
        } else {
            format!("{stale_prefix}{attempt}")
        };
        let staging_url =
            if single_file { format!("{parent}/{staged_name}") } else { format!("{parent}/{staged_name}/") };
        let staging = ListingTableUrl::parse(&staging_url)?.prefix().clone();
        // From the URL, not the text: an INSERT's target is a table's
        // location, `file:///...`, which is no path as written.
        let local_dir = match parsed.scheme() {
            "file" => parsed.get_url().to_file_path().ok().and_then(|path| Some(path.parent()?.join(&staged_name))),
            _ => None,
        };
        let staged = Staged {
            store,
            staging_url,
            staging,
            target: parsed.prefix().clone(),
            target_url: target.to_string(),
            single_file,
            local_dir,
        };
        staged.sweep(parent, &stale_prefix).await?;
        Ok(staged)
    }

    /// Removes what earlier attempts of the same job left beside the target.
    async fn sweep(&self, parent: &str, stale_prefix: &str) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            let parent_dir = dir.parent().expect("a staged path has a parent");
            let Ok(entries) = std::fs::read_dir(parent_dir) else { return Ok(()) };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(stale_prefix) {
                    let path = entry.path();
                    let removed =
                        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    removed
                        .map_err(|source| Error::Io { context: format!("cannot remove {}", path.display()), source })?;
                }
            }
            return Ok(());
        }
        let parent_path = ListingTableUrl::parse(format!("{parent}/"))?.prefix().clone();
        let listing = self.store.list(Some(&parent_path)).map_err(object_error);
        let stale: Vec<Path> = listing
            .try_filter_map(|meta| {
                let relative = meta.location.prefix_match(&parent_path).and_then(|mut parts| parts.next());
                let is_stale = relative.is_some_and(|first| first.as_ref().starts_with(stale_prefix));
                async move { Ok(is_stale.then_some(meta.location)) }
            })
            .try_collect()
            .await?;
        for path in stale {
            self.store.delete(&path).await.map_err(object_error)?;
        }
        Ok(())
    }

    /// Moves the staged files into the target. Returns how many moved.
    pub async fn commit(self) -> Result<usize> {
        let files: Vec<Path> = if self.single_file {
            match self.store.head(&self.staging).await {
                Ok(_) => vec![self.staging.clone()],
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(object_error(e)),
            }
        } else {
            self.store.list(Some(&self.staging)).map_ok(|m| m.location).map_err(object_error).try_collect().await?
        };
        for from in &files {
            let to = if self.single_file {
                self.target.clone()
            } else {
                let relative: Vec<_> = from.prefix_match(&self.staging).into_iter().flatten().collect();
                Path::from_iter(self.target.parts().chain(relative))
            };
            self.store
                .rename(from, &to)
                .await
                .map_err(|e| Error::Invalid(format!("cannot move {from} into {}: {e}", self.target_url)))?;
        }
        if let Some(dir) = &self.local_dir
            && dir.is_dir()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(files.len())
    }

    /// Removes the staged files: the write is abandoned.
    pub async fn discard(self) {
        if let Some(dir) = &self.local_dir {
            let _ = if dir.is_dir() { std::fs::remove_dir_all(dir) } else { std::fs::remove_file(dir) };
            return;
        }
        if self.single_file {
            let _ = self.store.delete(&self.staging).await;
            return;
        }
        if let Ok(files) = self.store.list(Some(&self.staging)).map_ok(|m| m.location).try_collect::<Vec<_>>().await {
            for f in files {
                let _ = self.store.delete(&f).await;
            }
        }
    }
}

/// Commits every staged write, in order.
pub async fn commit_all(staged: Vec<Staged>) -> Result<usize> {
    let mut moved = 0;
    for s in staged {
        moved += s.commit().await?;
    }
    Ok(moved)
}

/// Abandons every staged write.
pub async fn discard_all(staged: Vec<Staged>) {
    for s in staged {
        s.discard().await;
    }
}

fn object_error(e: object_store::Error) -> Error {
    Error::DataFusion(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_directory_appears_only_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let target = format!("{}/out/report/", dir.path().display());
        // A stale attempt of the same job is swept away.
        std::fs::create_dir_all(dir.path().join("out/.report.cohort-job7-1")).unwrap();
        let staged = Staged::beside(&target, "job7", 2, &runtime).await.unwrap();
        assert!(!dir.path().join("out/.report.cohort-job7-1").exists());
        assert!(staged.staging_url.ends_with("/out/.report.cohort-job7-2/"), "{}", staged.staging_url);
        std::fs::create_dir_all(dir.path().join("out/.report.cohort-job7-2/k=1")).unwrap();
        std::fs::write(dir.path().join("out/.report.cohort-job7-2/k=1/a.parquet"), b"x").unwrap();
        std::fs::write(dir.path().join("out/.report.cohort-job7-2/b.parquet"), b"y").unwrap();
        assert!(!dir.path().join("out/report").exists());
        assert_eq!(staged.commit().await.unwrap(), 2);
        assert_eq!(std::fs::read(dir.path().join("out/report/k=1/a.parquet")).unwrap(), b"x");
        assert_eq!(std::fs::read(dir.path().join("out/report/b.parquet")).unwrap(), b"y");
        assert!(!dir.path().join("out/.report.cohort-job7-2").exists());
    }

    #[tokio::test]
    async fn a_target_named_by_its_url_leaves_no_staging_behind() {
        // An INSERT stages beside its table's location, which is a URL.
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        std::fs::create_dir_all(dir.path().join("t/.events.cohort-sql1-1")).unwrap();
        let target = format!("file://{}/t/events/", dir.path().display());
        let staged = Staged::beside(&target, "sql1", 1, &runtime).await.unwrap();
        assert!(!dir.path().join("t/.events.cohort-sql1-1").exists(), "a stale attempt is swept");
        std::fs::create_dir_all(dir.path().join("t/.events.cohort-sql1-1")).unwrap();
        std::fs::write(dir.path().join("t/.events.cohort-sql1-1/a.parquet"), b"x").unwrap();
        assert_eq!(staged.commit().await.unwrap(), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("t")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec!["events"], "the staging directory is gone");
    }

    #[tokio::test]
    async fn a_staged_file_replaces_its_target_and_discard_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let target = format!("{}/result.csv", dir.path().display());
        let staged = Staged::beside(&target, "j", 1, &runtime).await.unwrap();
        assert!(staged.staging_url.ends_with("/.result.csv.cohort-j-1.csv"), "{}", staged.staging_url);
        std::fs::write(staged.staging_url.clone(), b"a\n1\n").unwrap();
        staged.commit().await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"a\n1\n");

        let staged = Staged::beside(&format!("{}/other/", dir.path().display()), "j", 1, &runtime).await.unwrap();
        std::fs::create_dir_all(staged.staging_url.clone()).unwrap();
        std::fs::write(format!("{}x.csv", staged.staging_url), b"1").unwrap();
        staged.discard().await;
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec!["result.csv"]);
    }
}
