//! The Parquet sink: rows buffered into one file at a time, which appears
//! in the target directory whole (written under a hidden name, then
//! renamed) once it is big or old enough. Readers never see a partial
//! file; a member killed mid-file leaves only a hidden leftover, and its
//! rows are read again from Kafka because their offsets were not committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use url::Url;

use crate::{Error, Result};

/// When a file is closed and committed.
#[derive(Clone, Copy, Debug)]
pub struct Roll {
    pub bytes: usize,
    pub after: Duration,
}

pub struct ParquetSink {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    /// Names files apart between members and restarts.
    prefix: String,
    schema: SchemaRef,
    roll: Roll,
    open: Option<(ArrowWriter<Vec<u8>>, Instant)>,
    rows: usize,
    files: u64,
}

impl ParquetSink {
    /// A sink writing into `location`: an absolute directory or an
    /// `s3://bucket/prefix/` URL (S3 settings from the AWS_* variables).
    pub fn open(location: &str, schema: SchemaRef, prefix: &str, roll: Roll) -> Result<ParquetSink> {
        let (store, dir): (Arc<dyn ObjectStore>, Path) = if location.starts_with('/') {
            std::fs::create_dir_all(location).map_err(|e| Error::Invalid(format!("cannot create {location}: {e}")))?;
            let dir = Path::from_filesystem_path(location)
                .map_err(|e| Error::Invalid(format!("`{location}` is not a usable path: {e}")))?;
            (Arc::new(object_store::local::LocalFileSystem::new()), dir)
        } else {
            let url =
                Url::parse(location).map_err(|e| Error::Invalid(format!("`{location}` is not a path or URL: {e}")))?;
            match url.scheme() {
                "s3" | "s3a" => {
                    let bucket = url.host_str().unwrap_or_default();
                    let store = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
                    (Arc::new(store), Path::from(url.path().trim_start_matches('/')))
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "no object store for `{other}://`; use an absolute path or s3://"
                    )));
                }
            }
        };
        Ok(ParquetSink { store, dir, prefix: prefix.to_string(), schema, roll, open: None, rows: 0, files: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.is_none() {
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let writer = ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props))?;
            self.open = Some((writer, Instant::now()));
        }
        let (writer, _) = self.open.as_mut().expect("opened above");
        writer.write(batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Whether the open file should be committed now.
    pub fn due(&self) -> bool {
        self.open.as_ref().is_some_and(|(w, opened)| {
            w.memory_size() + w.bytes_written() >= self.roll.bytes || opened.elapsed() >= self.roll.after
        })
    }

    /// Whether rows wait in an open file.
    pub fn pending(&self) -> bool {
        self.open.is_some()
    }

    /// Closes the open file and makes it visible; its path, if there was one.
    pub async fn commit(&mut self) -> Result<Option<String>> {
        let Some((writer, _)) = self.open.take() else { return Ok(None) };
        let bytes = writer.into_inner()?;
        self.files += 1;
        let name = format!("{}-{:06}.parquet", self.prefix, self.files);
        let hidden = self.dir.clone().join(format!(".{name}.inprogress"));
        let visible = self.dir.clone().join(name);
        self.store.put(&hidden, bytes.into()).await?;
        self.store.rename(&hidden, &visible).await?;
        self.rows = 0;
        Ok(Some(visible.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;
    use crate::schema::schema_of;

    #[tokio::test]
    async fn files_appear_whole_and_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema_of(&[("id".into(), "Int64".into())]).unwrap();
        let roll = Roll { bytes: 1 << 30, after: Duration::from_secs(3600) };
        let mut sink = ParquetSink::open(dir.path().to_str().unwrap(), schema.clone(), "m0", roll).unwrap();
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        sink.write(&batch).unwrap();
        assert!(sink.pending() && !sink.due());
        let visible = |d: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        };
        assert!(visible(dir.path()).is_empty(), "nothing visible before the commit");
        let path = sink.commit().await.unwrap().unwrap();
        assert!(path.ends_with("m0-000001.parquet"), "{path}");
        assert_eq!(visible(dir.path()), ["m0-000001.parquet"]);
        let file = std::fs::File::open(dir.path().join("m0-000001.parquet")).unwrap();
        let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 3);
        assert_eq!(sink.commit().await.unwrap(), None, "nothing open, nothing committed");
    }
}
