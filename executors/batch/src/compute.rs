//! Threads of the engine's own for the parts of queries that run in this
//! process: a query read from cached tables, or the driver's final stages
//! of a distributed one. The coordinator serves its control plane
//! (heartbeats, scheduling, the API) from its own runtime; a query that
//! computes for minutes on those threads would make agents look lost.
//! Here it computes beside them, and only its batches cross over.

use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// Batches in flight between the compute threads and the reader.
const IN_FLIGHT: usize = 2;

pub(crate) struct Compute {
    /// Taken on drop: a runtime must not be dropped from async code.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Compute {
    pub(crate) fn new(threads: usize) -> std::io::Result<Compute> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sql-compute")
            .thread_stack_size(crate::RUNTIME_THREAD_STACK)
            .enable_all()
            .build()?;
        Ok(Compute { runtime: Some(runtime) })
    }

    /// Runs `frame` on the compute threads; its batches, read from here.
    /// Dropping the stream stops the query.
    pub(crate) async fn stream(&self, frame: DataFrame) -> Result<SendableRecordBatchStream> {
        let runtime = self.runtime.as_ref().expect("the compute runtime lives as long as the engine");
        let (started, schema) = tokio::sync::oneshot::channel();
        let (sender, receiver) = tokio::sync::mpsc::channel(IN_FLIGHT);
        runtime.spawn(async move {
            let mut stream = match frame.execute_stream().await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            if started.send(Ok(stream.schema())).is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = sender.closed() => return,
                    next = stream.next() => match next {
                        Some(batch) => if sender.send(batch).await.is_err() { return },
                        None => return,
                    },
                }
            }
        });
        let schema =
            schema.await.map_err(|_| DataFusionError::Internal("the query's task ended unstarted".into()))??;
        let batches = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|batch| (batch, receiver))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

impl Compute {
    /// Runs `work` (planning) on the compute threads, so that a statement
    /// that takes long to plan holds up queries, never the runtime that
    /// answers agents' heartbeats.
    pub(crate) async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let runtime = self.runtime.as_ref().expect("the compute runtime lives as long as the engine");
        runtime.spawn(work).await.map_err(|e| DataFusionError::Internal(format!("planning ended early: {e}")))
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
