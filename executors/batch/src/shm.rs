//! Partitions in shared memory, for readers on a store's own host. A store
//! writes each partition it holds as an Arrow IPC file in its directory
//! under `/dev/shm` (tmpfs: memory, charged to the store's own cgroup),
//! and holds the batches decoded from a mapping of that file, so the rows
//! are in memory once. A reader on the same host maps the file and decodes
//! it without copying (arrow's `FileDecoder` over the mapping), and keeps
//! the mapping for its next query ([`read_kept`]); a reader elsewhere, or
//! one that cannot open the file, reads over Flight.
//!
//! A published file is never written again (it is written beside and
//! renamed in), only unlinked, which leaves existing mappings valid. The
//! directory is the store's alone (mode 0700); the agent removes it when
//! the store ends, however it ended.

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::root_as_footer;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};

use crate::store::PartId;

/// The shared-memory directory of the store whose allocation directory is
/// `alloc_dir`. Named from that path, since allocation ids repeat across
/// clusters sharing a host (the agent computes the same name to clean up).
pub fn store_dir(alloc_dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    alloc_dir.hash(&mut hasher);
    PathBuf::from(SHM_ROOT).join(format!("{STORE_DIR_PREFIX}{:016x}", hasher.finish()))
}

/// Where every store's directory lives, each named `cohort-store-*`.
const SHM_ROOT: &str = "/dev/shm";
const STORE_DIR_PREFIX: &str = "cohort-store-";

/// The lock a living store holds on its directory.
const OWNER_FILE: &str = ".owner";

/// A store's directory, owned while this lives: its `.owner` file is
/// locked (`flock`, which the kernel releases however the process ends,
/// and which works across PID namespaces).
#[derive(Debug)]
pub struct OwnedDir {
    _owner: File,
}

/// Makes the store's directory, private to its user, and takes its lock.
pub fn create_dir(dir: &Path) -> std::io::Result<OwnedDir> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let taken = || std::io::Error::other(format!("{} belongs to a living store", dir.display()));
    let owner_path = dir.join(OWNER_FILE);
    if let Ok(owner) = File::open(&owner_path)
        && !try_lock(&owner)
    {
        return Err(taken());
    }
    // Locked before it is visible: a sweeper never sees an unlocked owner.
    let staged = dir.join(format!("{OWNER_FILE}.{}", std::process::id()));
    let owner = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&staged)?;
    if !try_lock(&owner) {
        return Err(taken());
    }
    std::fs::rename(&staged, &owner_path)?;
    Ok(OwnedDir { _owner: owner })
}

/// Takes `file`'s exclusive lock if nobody holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a file descriptor the caller owns.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the directories of stores that ended without cleaning up (a
/// whole cluster killed with -9 leaves them, and their memory stays
/// charged to cgroups a later cluster may reuse); the names of those
/// removed. A directory whose lock is held, or that has no lock yet (a
/// store starting), is left alone.
pub fn remove_abandoned() -> Vec<PathBuf> {
    remove_abandoned_in(Path::new(SHM_ROOT))
}

fn remove_abandoned_in(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(STORE_DIR_PREFIX) {
            continue;
        }
        let Ok(owner) = File::open(dir.join(OWNER_FILE)) else { continue };
        if try_lock(&owner) && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

fn file_name(part: &PartId) -> String {
    // Table names are SQL identifiers, possibly quoted: keep the file name plain.
    let table: String = part.table.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{table}-{}-{}.arrow", part.version, part.partition)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DataFusionError {
    move |e| DataFusionError::Execution(format!("{context}: {e}"))
}

/// Writes `batches` as `part`'s file in `dir`; its path.
pub fn write(dir: &Path, part: &PartId, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<PathBuf> {
    let path = dir.join(file_name(part));
    let tmp = path.with_extension("tmp");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    let mut writer = FileWriter::try_new(std::io::BufWriter::new(file), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    std::fs::rename(&tmp, &path).map_err(io(format!("cannot publish {}", path.display())))?;
    Ok(path)
}

/// A read-only mapping of a whole file.
struct Mapping {
    at: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and never remapped; any thread may read it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `at` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped, once.
        unsafe { libc::munmap(self.at.as_ptr(), self.len) };
    }
}

fn map(file: &File) -> std::io::Result<Mapping> {
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "an empty file"));
    }
    // SAFETY: a shared read-only mapping of a file that is never written again once published.
    let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Mapping { at: NonNull::new(at).expect("mmap returned a mapping"), len })
}

/// What identifies one published file at a path: tmpfs reuses inode
/// numbers, so the change time and length are compared too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Identity {
    inode: u64,
    changed_ns: i128,
    len: u64,
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let changed_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        Some(Identity { inode: meta.ino(), changed_ns, len: meta.len() })
    }
}

/// A published file, mapped and decoded whole.
struct Mapped {
    identity: Identity,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

/// Files this process has mapped for readers, by path. Decoding validates
/// every offset and string (a third of a cached scan's cost, profiled on
/// TPC-H), and mapping faults every page in: both are paid once per file
/// and process, not once per query. A file its store has dropped is
/// forgotten within [`SWEEP_EVERY`], which releases its memory.
static MAPPED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<Mapped>>>> =
    std::sync::LazyLock::new(|| {
        let sweep = std::thread::Builder::new().name("shm-sweep".into()).spawn(|| {
            loop {
                std::thread::sleep(SWEEP_EVERY);
                let mapped: Vec<(PathBuf, Identity)> =
                    MAPPED.lock().expect("mapped files").iter().map(|(p, m)| (p.clone(), m.identity)).collect();
                let gone: Vec<PathBuf> =
                    mapped.into_iter().filter(|(path, id)| Identity::of(path) != Some(*id)).map(|(p, _)| p).collect();
                if !gone.is_empty() {
                    let mut mapped = MAPPED.lock().expect("mapped files");
                    gone.iter().for_each(|path| drop(mapped.remove(path)));
                }
            }
        });
        if let Err(e) = sweep {
            tracing::warn!(error = %e, "cannot start the sweeper of mapped partitions: they stay mapped");
        }
        std::sync::Mutex::new(std::collections::HashMap::new())
    });

const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Like [`read`], for readers that come back: the file is mapped and
/// decoded once per process and kept while it is published (see [`MAPPED`]).
pub fn read_kept(path: &Path, projection: Option<&[usize]>) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
    let Some(identity) = Identity::of(path) else { return Ok(None) };
    let kept = MAPPED.lock().expect("mapped files").get(path).filter(|m| m.identity == identity).cloned();
    let mapped = match kept {
        Some(mapped) => mapped,
        None => {
            let Some((schema, batches)) = read(path, None)? else { return Ok(None) };
            let mapped = Arc::new(Mapped { identity, schema, batches });
            MAPPED.lock().expect("mapped files").insert(path.to_path_buf(), mapped.clone());
            mapped
        }
    };
    match projection {
        None => Ok(Some((mapped.schema.clone(), mapped.batches.clone()))),
        Some(columns) => Ok(Some((
            Arc::new(mapped.schema.project(columns)?),
            mapped.batches.iter().map(|b| b.project(columns)).collect::<std::result::Result<_, _>>()?,
        ))),
    }
}

/// The batches of the file at `path` (only `projection`'s columns), decoded
/// over a mapping of it without copying; none when it cannot be opened
/// (another host's, or another user's).
pub fn read(path: &Path, projection: Option<&[usize]>) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
    let Ok(file) = File::open(path) else { return Ok(None) };
    let mapping = map(&file).map_err(io(format!("cannot map {}", path.display())))?;
    let buffer = Buffer::from(bytes::Bytes::from_owner(mapping));
    let bad = |what: &str| DataFusionError::Execution(format!("{}: not an Arrow IPC file ({what})", path.display()));
    let trailer = buffer.len().checked_sub(10).ok_or_else(|| bad("too short"))?;
    let footer_len = read_footer_length(buffer[trailer..].try_into().expect("ten bytes"))?;
    let footer_start = trailer.checked_sub(footer_len).ok_or_else(|| bad("its footer is cut short"))?;
    let footer = root_as_footer(&buffer[footer_start..trailer]).map_err(|e| bad(&e.to_string()))?;
    let schema = Arc::new(fb_to_schema(footer.schema().ok_or_else(|| bad("no schema"))?));
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    let schema = match projection {
        Some(columns) => {
            decoder = decoder.with_projection(columns.to_vec());
            Arc::new(schema.project(columns)?)
        }
        None => schema,
    };
    let block_data = |offset: i64, meta: i32, body: i64| {
        let (offset, length) = (offset as usize, meta as usize + body as usize);
        if offset.checked_add(length).is_none_or(|end| end > footer_start) {
            return Err(bad("a block lies outside the file"));
        }
        Ok(buffer.slice_with_length(offset, length))
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
        decoder.read_dictionary(block, &data)?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let data = block_data(block.offset(), block.metaDataLength(), block.bodyLength())?;
        if let Some(batch) = decoder.read_record_batch(block, &data)? {
            batches.push(batch);
        }
    }
    Ok(Some((schema, batches)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_partition_written_to_shared_memory_reads_back_projected_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(StringArray::from_iter_values((0..1000).map(|i| format!("row {i}")))),
            ],
        )
        .unwrap();
        let part = PartId { table: "\"Odd Name\"".into(), version: 3, partition: 1 };
        let path = write(dir.path(), &part, &schema, &[batch.clone(), batch.slice(10, 5)]).unwrap();
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("_Odd_Name_-3-1"));

        let (read_schema, batches) = read(&path, None).unwrap().unwrap();
        assert_eq!(read_schema, schema);
        assert_eq!(batches, vec![batch.clone(), batch.slice(10, 5)]);
        let (projected, batches) = read(&path, Some(&[1])).unwrap().unwrap();
        assert_eq!(projected.fields().len(), 1);
        assert_eq!(batches[0].column(0).as_any().downcast_ref::<StringArray>().unwrap().value(7), "row 7");

        assert!(read(&dir.path().join("nope.arrow"), None).unwrap().is_none());
        std::fs::write(dir.path().join("bad.arrow"), b"not arrow at all").unwrap();
        assert!(read(&dir.path().join("bad.arrow"), None).is_err());
    }

    #[test]
    fn directories_of_stores_that_ended_are_removed_and_living_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let living = root.path().join("cohort-store-living");
        let _owned = create_dir(&living).unwrap();
        assert!(create_dir(&living).is_err(), "a second store cannot take a living store's directory");
        let ended = root.path().join("cohort-store-ended");
        drop(create_dir(&ended).unwrap());
        std::fs::write(ended.join("t-1-0.arrow"), b"rows").unwrap();
        let starting = root.path().join("cohort-store-starting");
        std::fs::create_dir(&starting).unwrap();
        let other = root.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();

        assert_eq!(remove_abandoned_in(root.path()), vec![ended.clone()]);
        assert!(!ended.exists());
        assert!(living.exists() && starting.exists() && other.exists());
    }

    #[test]
    fn a_kept_mapping_serves_readers_until_its_file_is_dropped_or_published_again() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let rows = |from: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + 100)),
                    Arc::new(StringArray::from_iter_values((from..from + 100).map(|i| format!("row {i}")))),
                ],
            )
            .unwrap()
        };
        let part = PartId { table: "kept".into(), version: 1, partition: 0 };
        let path = write(dir.path(), &part, &schema, &[rows(0)]).unwrap();
        let ids = |batches: &[RecordBatch]| batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();

        let (_, first) = read_kept(&path, Some(&[0])).unwrap().unwrap();
        let (_, again) = read_kept(&path, None).unwrap().unwrap();
        assert_eq!(first[0].num_columns(), 1);
        assert_eq!(again[0].num_columns(), 2);
        // The same decoded rows, not a second mapping.
        assert_eq!(ids(&first).values().as_ptr(), ids(&again).values().as_ptr());

        // Published again under the same name (a new file, renamed in): the new rows.
        write(dir.path(), &part, &schema, &[rows(1000)]).unwrap();
        let (_, replaced) = read_kept(&path, None).unwrap().unwrap();
        assert_eq!(ids(&replaced).value(0), 1000);

        std::fs::remove_file(&path).unwrap();
        assert!(read_kept(&path, None).unwrap().is_none());
        // Dropped by its store: the sweeper lets the mapping go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while MAPPED.lock().unwrap().contains_key(&path) {
            assert!(std::time::Instant::now() < deadline, "a dropped file stayed mapped for 30 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
