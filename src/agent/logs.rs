//! Serves executor logs from this agent's log files (`cohort logs`), to the
//! coordinator only: it presents the logs token it gave at registration.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use cohort_proto as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::executors::Executors;

pub struct LogService {
    data_dir: PathBuf,
    executors: Executors,
    /// The coordinator's logs token; none before the first registration.
    token: LogsToken,
}

/// Shared with the session that learns it at registration.
pub(super) type LogsToken = std::sync::Arc<std::sync::RwLock<Option<String>>>;

impl LogService {
    pub(super) fn new(data_dir: PathBuf, executors: Executors, token: LogsToken) -> LogService {
        LogService { data_dir, executors, token }
    }

    fn check(&self, request: &Request<pb::ReadLogRequest>) -> Result<(), Status> {
        let presented = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let expected = self.token.read().expect("logs token").clone();
        match (presented.and_then(|p| p.strip_prefix("Bearer ")), expected) {
            (Some(p), Some(e)) if p == e => Ok(()),
            _ => Err(Status::unauthenticated("executor logs are read through the coordinator (`cohort logs`)")),
        }
    }
}

#[tonic::async_trait]
impl pb::agent_logs_server::AgentLogs for LogService {
    type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

    async fn read(&self, req: Request<pb::ReadLogRequest>) -> Result<Response<Self::ReadStream>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        let path = super::log_path(&self.data_dir, req.alloc_id);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::not_found(format!("no log for allocation {}: {e}", req.alloc_id)))?;
        if req.tail_bytes > 0 {
            let len = file.metadata().await.map_err(|e| Status::internal(e.to_string()))?.len();
            file.seek(std::io::SeekFrom::Start(len.saturating_sub(req.tail_bytes)))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let executors = self.executors.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut finishing = false;
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => {
                        if finishing {
                            return;
                        }
                        let running = executors.is_running(req.alloc_id);
                        if !req.follow || !running {
                            // Read to the end once more: output written just before exit.
                            finishing = true;
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(n) => {
                        if tx.send(Ok(pb::LogChunk { data: buf[..n].to_vec() })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
