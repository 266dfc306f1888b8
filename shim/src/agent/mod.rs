//! The guest agent as the shim sees it: the [`Agent`] trait (as Kata's runtime-rs has one)
//! and its errors. [`client::AgentClient`] is the real one, over the pod's hybrid vsock; the
//! task state machine's unit tests use a fake (`task::fakes`).

pub mod client;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use husk_protocol::agent::{ContainerStatsResponse, Interface, Stdio};
use husk_protocol::io_stream::StreamHeader;
use thiserror::Error;
use tokio::net::UnixStream;

pub use client::AgentClient;

/// What the shim asks of the agent in the pod's VM. Every call but [`Agent::wait_process`]
/// is bounded in time by the implementation.
#[async_trait]
pub trait Agent: Send + Sync {
    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        tag: &str,
        pod_resources: Vec<u8>,
    ) -> Result<(), AgentError>;
    async fn destroy_sandbox(&self) -> Result<(), AgentError>;
    /// Hands the pod's network interfaces to the guest.
    async fn configure_network(&self, interfaces: Vec<Interface>) -> Result<(), AgentError>;
    /// Creates a container from its guest OCI spec; returns the guest pid of its init.
    async fn create_container(
        &self,
        id: &str,
        spec: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32, AgentError>;
    async fn start_container(&self, id: &str) -> Result<(), AgentError>;
    /// Removes a container; a created, never started init is killed.
    async fn remove_container(&self, id: &str) -> Result<(), AgentError>;
    /// Starts an extra process in a running container; returns its guest pid.
    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32, AgentError>;
    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError>;
    /// Until the process exits (its exit status); an error if the VM or connection goes.
    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ProcessExit, AgentError>;
    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError>;
    /// Freezes (`paused`) or thaws every process of the container.
    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), AgentError>;
    /// Applies new limits (OCI `linux.resources` JSON) to the container's cgroup.
    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), AgentError>;
    /// Brings the guest copy of an atomically updated volume (guest path `source`) up to
    /// date; `data_target` is its `..data` target on the host.
    async fn sync_volume(
        &self,
        id: &str,
        source: &str,
        data_target: &str,
    ) -> Result<(), AgentError>;
    /// The container cgroup's figures, as the guest reports them (unchecked guest data).
    async fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError>;
    /// The same figures for the pod's guest cgroup, which holds all its containers.
    async fn pod_stats(&self) -> Result<ContainerStatsResponse, AgentError>;
    /// Each container's OOM kill count, once one exceeds `known` (or after about
    /// [`husk_protocol::OOM_WAIT`]). Unchecked guest data.
    async fn wait_oom_kills(
        &self,
        known: HashMap<String, u64>,
    ) -> Result<HashMap<String, u64>, AgentError>;
    async fn tty_resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError>;
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError>;
    /// Opens one stdio stream of a process.
    async fn open_stream(&self, header: &StreamHeader) -> Result<UnixStream, AgentError>;
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("the guest agent did not answer within {waited:?} (agent.connect_timeout_ms): {last}")]
    NotReady { waited: Duration, last: String },
    #[error("the VM ended {waited:?} after it was started, before its agent answered: {how}")]
    VmEnded { waited: Duration, how: String },
    /// The agent's message is guest text: escaped before it reaches a log or containerd.
    #[error("agent {method}: {}", husk_protocol::guest_text::escape(&rpc_text(source)))]
    Rpc {
        method: &'static str,
        source: ttrpc::Error,
    },
    #[error("opening {what} stream: {source}")]
    Stream {
        what: String,
        #[source]
        source: StreamError,
    },
}

/// Why one stdio stream could not be opened.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("invalid stream header: {0}")]
    Header(#[source] husk_protocol::io_stream::IoStreamError),
    #[error(transparent)]
    Connect(#[from] husk_hypervisor::hybrid_client::HybridConnectError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the agent refused the stream (status {0})")]
    Refused(u8),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The VM is gone (as the fake agent of the tests reports it).
    #[error("the VM is gone")]
    VmGone,
}

/// How a process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Shell-style: the exit code, or 128 + signal number.
    pub status: i32,
    /// OOM kills counted in the container's cgroup once the process had exited.
    pub oom_kills: u64,
}

/// An agent's answer as text: a status is its code and message (its Debug form would
/// quote and escape the message a second time).
fn rpc_text(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

impl AgentError {
    /// The ttrpc status code the agent answered with, if it answered at all.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => Some(s.code()),
            _ => None,
        }
    }
}
