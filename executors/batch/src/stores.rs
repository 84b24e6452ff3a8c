//! Where files live. Local paths always work; an `s3://bucket/...` location
//! gets an S3 store for its bucket on first use, configured from the
//! environment as the AWS tools are (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for S3-compatible
//! stores such as MinIO, `AWS_ALLOW_HTTP`). Drivers and workers use the
//! same registry, so a plan that names a bucket runs wherever it lands.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

#[derive(Debug, Default)]
pub struct Stores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for Stores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    DataFusionError::Configuration(format!("`{url}` names no bucket (s3://BUCKET/path/)"))
                })?;
                let store = AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(|e| {
                    DataFusionError::Configuration(format!(
                        "cannot use bucket `{bucket}` (S3 settings come from AWS_* variables): {e}"
                    ))
                })?;
                let store: Arc<dyn ObjectStore> = Arc::new(store);
                self.known.register_store(url, store.clone());
                Ok(store)
            }
            other => Err(DataFusionError::Configuration(format!(
                "no object store for `{other}://` locations; use an absolute path or s3://"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gets_an_s3_store_and_unknown_schemes_a_clear_error() {
        let stores = Stores::default();
        let local = stores.get_store(&Url::parse("file:///tmp/x").unwrap()).unwrap();
        assert!(local.to_string().contains("LocalFileSystem"), "{local}");
        let s3 = stores.get_store(&Url::parse("s3://my-bucket/data/").unwrap()).unwrap();
        assert!(s3.to_string().contains("my-bucket"), "{s3}");
        let e = stores.get_store(&Url::parse("hdfs://nn:8020/data/").unwrap()).unwrap_err();
        assert!(e.to_string().contains("hdfs://"), "{e}");
    }
}
