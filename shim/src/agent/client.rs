//! The real [`Agent`]: ttrpc over the hybrid vsock, every request bounded by the configured
//! RPC timeout (except waiting for a process to exit), and the per-stream IO connections of
//! `husk_protocol::io_stream`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Agent, AgentError, ProcessExit, StreamError};

use async_trait::async_trait;
use husk_hypervisor::VmExit;
use husk_hypervisor::hybrid_client::{self, HybridConnectError};
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient as TtrpcClient;
use husk_protocol::io_stream::{STATUS_OK, StreamHeader};
use husk_protocol::port_forward::ForwardHeader;
use husk_protocol::{AGENT_VSOCK_PORT, FORWARD_VSOCK_PORT, IO_VSOCK_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound on one health check while waiting for the agent to come up.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on opening one stdio stream (connect, header, status byte).
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Connected to one pod's agent.
pub struct AgentClient {
    client: TtrpcClient,
    uds: PathBuf,
    rpc_timeout: Duration,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

macro_rules! rpc {
    ($self:ident, $method:ident, $req:expr) => {
        $self
            .client
            .$method(
                ttrpc::context::with_timeout(nanos($self.rpc_timeout)),
                &$req,
            )
            .await
            .map_err(|source| AgentError::Rpc {
                method: stringify!($method),
                source,
            })
    };
}

impl AgentClient {
    /// Connects and waits for a health check to pass, until `deadline`. Stops early, with the
    /// VM's own words, if the VM ends meanwhile.
    pub async fn connect(
        uds: &Path,
        deadline: Instant,
        vm_exit: watch::Receiver<Option<VmExit>>,
        rpc_timeout: Duration,
    ) -> Result<(Self, CheckResponse), AgentError> {
        let started = Instant::now();
        let vm_gone = || vm_exit.borrow().as_ref().map(|e| e.description.clone());
        let mut last = String::from("no attempt made");
        while Instant::now() < deadline {
            let stream =
                match hybrid_client::connect_with_retry(uds, AGENT_VSOCK_PORT, deadline, vm_gone)
                    .await
                {
                    Ok(s) => s,
                    Err(HybridConnectError::Deadline { last, .. }) => {
                        if let Some(how) = vm_gone() {
                            return Err(AgentError::VmEnded {
                                waited: started.elapsed(),
                                how,
                            });
                        }
                        return Err(AgentError::NotReady {
                            waited: started.elapsed(),
                            last,
                        });
                    }
                    Err(e) => {
                        return Err(AgentError::NotReady {
                            waited: started.elapsed(),
                            last: e.to_string(),
                        });
                    }
                };
            let client = TtrpcClient::new(ttrpc::asynchronous::Client::new(stream.into()));
            let timeout = CHECK_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            match client
                .check(
                    ttrpc::context::with_timeout(nanos(timeout)),
                    &CheckRequest::new(),
                )
                .await
            {
                Ok(check) => {
                    return Ok((
                        Self {
                            client,
                            uds: uds.to_path_buf(),
                            rpc_timeout,
                        },
                        check,
                    ));
                }
                Err(e) => last = format!("health check failed: {e}"),
            }
            if let Some(how) = vm_gone() {
                return Err(AgentError::VmEnded {
                    waited: started.elapsed(),
                    how,
                });
            }
        }
        Err(AgentError::NotReady {
            waited: started.elapsed(),
            last,
        })
    }

    /// One health check on the open connection (the cheapest round trip there is).
    pub async fn check(&self) -> Result<CheckResponse, AgentError> {
        rpc!(self, check, CheckRequest::new())
    }
}

#[async_trait]
impl Agent for AgentClient {
    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        tag: &str,
        pod_resources: Vec<u8>,
    ) -> Result<(), AgentError> {
        let mut req = CreateSandboxRequest::new();
        req.pod_resources = pod_resources;
        req.sandbox_id = sandbox_id.to_string();
        req.hostname = hostname.to_string();
        req.shared_fs_tag = tag.to_string();
        rpc!(self, create_sandbox, req).map(drop)
    }

    async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        rpc!(self, destroy_sandbox, DestroySandboxRequest::new()).map(drop)
    }

    async fn configure_network(&self, interfaces: Vec<Interface>) -> Result<(), AgentError> {
        let mut req = ConfigureNetworkRequest::new();
        req.interfaces = interfaces;
        rpc!(self, configure_network, req).map(drop)
    }

    async fn create_container(
        &self,
        id: &str,
        spec: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32, AgentError> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.to_string();
        req.oci_spec = spec;
        req.stdio = protobuf::MessageField::some(stdio);
        rpc!(self, create_container, req).map(|r| r.pid)
    }

    async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        rpc!(self, start_container, container_req(id)).map(drop)
    }

    async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        rpc!(self, remove_container, container_req(id)).map(drop)
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32, AgentError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.process = process;
        req.stdio = protobuf::MessageField::some(stdio);
        rpc!(self, exec_process, req).map(|r| r.pid)
    }

    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        rpc!(self, signal_process, req).map(drop)
    }

    /// Blocks until the process exits; ends with an error if the VM or connection goes away.
    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ProcessExit, AgentError> {
        self.client
            .wait_process(
                ttrpc::context::Context::default(),
                &process_req(id, exec_id),
            )
            .await
            .map(|r| ProcessExit {
                status: r.exit_status,
                oom_kills: r.oom_kills,
            })
            .map_err(|source| AgentError::Rpc {
                method: "wait_process",
                source,
            })
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        rpc!(self, list_processes, container_req(id)).map(|r| r.pids)
    }

    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), AgentError> {
        if paused {
            rpc!(self, pause_container, container_req(id)).map(drop)
        } else {
            rpc!(self, resume_container, container_req(id)).map(drop)
        }
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), AgentError> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = id.to_string();
        req.resources = resources;
        rpc!(self, update_container, req).map(drop)
    }

    async fn sync_volume(
        &self,
        id: &str,
        source: &str,
        data_target: &str,
    ) -> Result<(), AgentError> {
        let mut req = SyncVolumeRequest::new();
        req.container_id = id.to_string();
        req.source = source.to_string();
        req.data_target = data_target.to_string();
        rpc!(self, sync_volume, req).map(drop)
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError> {
        rpc!(self, container_stats, container_req(id))
    }

    async fn pod_stats(&self) -> Result<ContainerStatsResponse, AgentError> {
        rpc!(self, pod_stats, Empty::new())
    }

    async fn wait_oom_kills(
        &self,
        known: HashMap<String, u64>,
    ) -> Result<HashMap<String, u64>, AgentError> {
        let mut req = OomKills::new();
        req.counts = known;
        // The agent holds the call up to OOM_WAIT by design.
        let timeout = husk_protocol::OOM_WAIT + self.rpc_timeout;
        self.client
            .wait_oom_kills(ttrpc::context::with_timeout(nanos(timeout)), &req)
            .await
            .map(|r| r.counts)
            .map_err(|source| AgentError::Rpc {
                method: "wait_oom_kills",
                source,
            })
    }

    async fn tty_resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.rows = rows;
        req.cols = cols;
        rpc!(self, tty_win_resize, req).map(drop)
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        rpc!(self, close_stdin, process_req(id, exec_id)).map(drop)
    }

    /// Opens one stdio stream of a process on the agent's IO port.
    async fn open_stream(&self, header: &StreamHeader) -> Result<UnixStream, AgentError> {
        let what = format!(
            "{:?} of {}/{}",
            header.kind, header.container_id, header.exec_id
        );
        let fail = |source: StreamError| AgentError::Stream {
            what: what.clone(),
            source,
        };
        let bytes = header.encode().map_err(|e| fail(StreamError::Header(e)))?;
        open_on_port(&self.uds, IO_VSOCK_PORT, &bytes)
            .await
            .map_err(fail)
    }
}

/// Opens a forwarded connection to `header.port` on the guest's loopback (CRI PortForward),
/// through the pod's hybrid vsock socket `uds`.
pub async fn open_port_forward(
    uds: &Path,
    header: ForwardHeader,
) -> Result<UnixStream, AgentError> {
    open_on_port(uds, FORWARD_VSOCK_PORT, &header.encode())
        .await
        .map_err(|source| AgentError::Stream {
            what: format!("forwarded port {}", header.port),
            source,
        })
}

/// Connects to a vsock port of the agent, sends `header` and waits for the status byte.
async fn open_on_port(uds: &Path, port: u32, header: &[u8]) -> Result<UnixStream, StreamError> {
    let open = async {
        let mut s = hybrid_client::connect(uds, port, STREAM_OPEN_TIMEOUT).await?;
        s.write_all(header).await?;
        match s.read_u8().await? {
            STATUS_OK => Ok(s),
            status => Err(StreamError::Refused(status)),
        }
    };
    match tokio::time::timeout(STREAM_OPEN_TIMEOUT, open).await {
        Ok(r) => r,
        Err(_) => Err(StreamError::Timeout(STREAM_OPEN_TIMEOUT)),
    }
}

fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
}

fn process_req(id: &str, exec_id: &str) -> ProcessRequest {
    let mut r = ProcessRequest::new();
    r.container_id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}
