//! Connections to workers, with the timeouts datafusion-distributed's
//! default resolver lacks: a connect timeout (a dead host fails in
//! seconds, not minutes) and HTTP/2 keepalive (a host that vanishes
//! mid-stream is noticed). No overall request timeout: it would cut long
//! streams short. Channels are made lazily and kept per URL; `forget` drops
//! the one of a worker that went away. In a cluster they are TLS, with the
//! caller's certificate (workers serve only peers of their cluster).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion_distributed::{ChannelResolver, WorkerChannel, grpc};
use url::Url;

/// How long connecting to a worker may take before the query is told.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Default)]
pub struct Channels {
    cache: Arc<Mutex<HashMap<Url, grpc::BoxCloneSyncChannel>>>,
    /// Plain Flight channels, to stores.
    stores: Arc<Mutex<HashMap<String, tonic::transport::Channel>>>,
    /// TLS for every worker (the URLs' scheme is then taken as `https`).
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Channels {
    /// Channels that speak TLS as `tls` says; plaintext when it is none.
    pub fn new(tls: Option<tonic::transport::ClientTlsConfig>) -> Channels {
        Channels { cache: Arc::default(), stores: Arc::default(), tls }
    }

    /// Forgets the connection to a worker (it died, or was replaced).
    pub fn forget(&self, url: &Url) {
        self.cache.lock().expect("channel cache").remove(url);
        self.stores.lock().expect("channel cache").remove(url.as_str());
    }

    fn channel(&self, url: &Url) -> Result<grpc::BoxCloneSyncChannel, DataFusionError> {
        let mut cache = self.cache.lock().expect("channel cache");
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let channel = grpc::BoxCloneSyncChannel::new(self.endpoint(url)?.connect_lazy());
        cache.insert(url.clone(), channel.clone());
        Ok(channel)
    }

    /// A channel to the store at `url`, with the same timeouts and TLS.
    pub fn flight(&self, url: &str) -> Result<tonic::transport::Channel, DataFusionError> {
        let mut stores = self.stores.lock().expect("channel cache");
        if let Some(c) = stores.get(url) {
            return Ok(c.clone());
        }
        let parsed =
            Url::parse(url).map_err(|e| DataFusionError::Configuration(format!("invalid store URL `{url}`: {e}")))?;
        let channel = self.endpoint(&parsed)?.connect_lazy();
        stores.insert(url.to_string(), channel.clone());
        Ok(channel)
    }

    fn endpoint(&self, url: &Url) -> Result<tonic::transport::Endpoint, DataFusionError> {
        let invalid =
            |e: &dyn std::fmt::Display| DataFusionError::Configuration(format!("invalid worker URL `{url}`: {e}"));
        let mut target = url.clone();
        if self.tls.is_some() {
            target.set_scheme("https").map_err(|()| invalid(&"no https form"))?;
        }
        let mut endpoint = tonic::transport::Endpoint::from_shared(target.to_string())
            .map_err(|e| invalid(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| invalid(&e))?;
        }
        Ok(endpoint)
    }
}

#[async_trait]
impl ChannelResolver for Channels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        self.channel(url).map(grpc::create_worker_client)
    }
}
