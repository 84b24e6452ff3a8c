//! Reading a slot's log from the agent that holds it, for the front doors
//! that show log tails and for pipeline progress.

use std::time::Duration;

use cohort_proto as pb;

use super::CoreHandle;
use super::core::CoordinatorError;

/// A client of an agent's log service, presenting that agent's logs token
/// over TLS as the coordinator (`core.agents_tls`).
pub async fn agent_client(
    core: &CoreHandle,
    address: &str,
    token: &str,
) -> Result<
    pb::agent_logs_client::AgentLogsClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::cli::config::Bearer>,
    >,
    String,
> {
    // The address is what the agent registered: outside input.
    let channel = tonic::transport::Channel::from_shared(crate::tls::https(address))
        .map_err(|e| format!("`{address}` is not an address: {e}"))?
        .tls_config(core.agents_tls.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let bearer = crate::cli::config::Bearer::with(token);
    Ok(pb::agent_logs_client::AgentLogsClient::with_interceptor(channel, bearer))
}

/// A whole log is read within this long, or the read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The log of `job`'s slot `slot` as its agent has it now: its last
/// `tail_bytes` bytes, or all of it when that is 0.
pub async fn read(core: &CoreHandle, job: u64, slot: u32, tail_bytes: u64) -> Result<Vec<u8>, CoordinatorError> {
    let (address, alloc, token) = core.call(move |c| c.log_source(job, slot)).await??;
    let unreachable = |e: String| CoordinatorError::Unavailable(format!("cannot read the log at {address}: {e}"));
    let read = async {
        let mut agent = agent_client(core, &address, &token).await.map_err(|e| unreachable(e.to_string()))?;
        let request = pb::ReadLogRequest { alloc_id: alloc, follow: false, tail_bytes };
        let mut stream = agent.read(request).await.map_err(|e| unreachable(e.message().to_string()))?.into_inner();
        let mut text = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| unreachable(e.message().to_string()))? {
            text.extend_from_slice(&chunk.data);
        }
        Ok(text)
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| unreachable("timed out".into()))?
}
