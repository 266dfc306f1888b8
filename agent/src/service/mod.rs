//! The `husk.agent.v1.Agent` ttrpc service: decodes requests, delegates to [`Containers`] and
//! [`Sandbox`], and turns errors into precise ttrpc status codes ([`status`]).

pub mod status;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use husk_protocol::agent::{
    CheckRequest, CheckResponse, ConfigureNetworkRequest, ContainerRequest, ContainerStatsResponse,
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, Empty, ExecProcessRequest,
    IoDeviceStats, ListProcessesResponse, OomKills, ProcessRequest, ProcessStarted,
    SignalProcessRequest, Stdio, SyncVolumeRequest, TtyWinResizeRequest, UpdateContainerRequest,
    WaitProcessResponse,
};
use husk_protocol::agent_ttrpc::Agent;
use slog::{Logger, debug, info};
use ttrpc::Code;
use ttrpc::r#async::TtrpcContext;

use crate::container::Containers;
use crate::network;
use crate::sandbox::{self, Sandbox, SandboxConfig};
use crate::stdio::StdioRequest;

use self::status::rpc_error;

/// DestroySandbox waits this long before tearing down, so its reply leaves the guest first.
pub const DESTROY_REPLY_GRACE: Duration = Duration::from_millis(100);
/// DestroySandbox waits this long for killed containers before powering off.
pub const DESTROY_KILL_WAIT: Duration = Duration::from_secs(3);

pub struct AgentService {
    containers: Arc<Containers>,
    sandbox: Arc<Sandbox>,
    /// When the guest ran `/init` and the agent began serving.
    boot: crate::guest_info::BootTimes,
    log: Logger,
}

impl AgentService {
    pub fn new(
        containers: Arc<Containers>,
        sandbox: Arc<Sandbox>,
        boot: crate::guest_info::BootTimes,
        log: Logger,
    ) -> Self {
        Self {
            containers,
            sandbox,
            boot,
            log,
        }
    }
}

fn stdio(s: Option<&Stdio>) -> StdioRequest {
    s.map(|s| StdioRequest {
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
    })
    .unwrap_or_default()
}

fn started(pid: i32) -> ttrpc::Result<ProcessStarted> {
    let pid =
        u32::try_from(pid).map_err(|_| rpc_error(Code::INTERNAL, format!("bad pid {pid}")))?;
    Ok(ProcessStarted {
        pid,
        ..Default::default()
    })
}

/// Runs a state-changing operation to completion even if its caller goes away: ttrpc drops a
/// handler at the client's deadline, and a create or remove cut short half-way would leave
/// records, processes or mounts inconsistent. The caller then sees DEADLINE_EXCEEDED and can
/// retry or clean up against a consistent state.
async fn detached<T: Send + 'static>(
    operation: impl Future<Output = T> + Send + 'static,
) -> ttrpc::Result<T> {
    tokio::spawn(operation)
        .await
        .map_err(|e| rpc_error(Code::INTERNAL, e))
}

/// Logs a failed call at debug level (the shim logs what it receives) and passes it on.
fn logged<T, E: Into<ttrpc::Error> + std::fmt::Display>(
    log: &Logger,
    rpc: &str,
    r: Result<T, E>,
) -> ttrpc::Result<T> {
    r.map_err(|e| {
        debug!(log, "request failed"; "rpc" => rpc, "error" => %e);
        e.into()
    })
}

#[async_trait]
impl Agent for AgentService {
    async fn check(&self, _ctx: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(CheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: crate::guest_info::kernel_release(),
            boot_to_agent_ms: self.boot.serving_ms,
            uptime_us: crate::guest_info::uptime_us().unwrap_or_default(),
            init_uptime_us: self.boot.init_us,
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let config = SandboxConfig {
            id: req.sandbox_id,
            hostname: req.hostname,
            shared_fs_tag: req.shared_fs_tag,
        };
        let sandbox = Arc::clone(&self.sandbox);
        let created = tokio::task::spawn_blocking(move || sandbox.create(config))
            .await
            .map_err(|e| rpc_error(Code::INTERNAL, e))?;
        logged(&self.log, "CreateSandbox", created)?;
        let limited = self.containers.limit_pod(&req.pod_resources).await;
        logged(&self.log, "CreateSandbox", limited)?;
        // A pod's containers follow its sandbox at once; their first helper is ready by then.
        self.containers.prepare_helper();
        Ok(Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        info!(self.log, "destroying the sandbox");
        let containers = Arc::clone(&self.containers);
        let shared_dir = self.sandbox.shared_dir().to_path_buf();
        let log = self.log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DESTROY_REPLY_GRACE).await;
            containers.kill_everything(DESTROY_KILL_WAIT).await;
            let _ =
                tokio::task::spawn_blocking(move || sandbox::power_off(&shared_dir, &log)).await;
        });
        Ok(Empty::new())
    }

    async fn configure_network(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        let interfaces = logged(
            &self.log,
            "ConfigureNetwork",
            network::parse(&req.interfaces),
        )?;
        let configured = network::configure(&interfaces, &self.log).await;
        logged(&self.log, "ConfigureNetwork", configured)?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<ProcessStarted> {
        let stdio = stdio(req.stdio.as_ref());
        let containers = Arc::clone(&self.containers);
        let pid = detached(async move {
            containers
                .create(&req.container_id, &req.oci_spec, stdio)
                .await
        })
        .await?;
        started(logged(&self.log, "CreateContainer", pid)?)
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let started = detached(async move { containers.start(&req.container_id).await }).await?;
        logged(&self.log, "StartContainer", started)?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let removed = detached(async move { containers.remove(&req.container_id).await }).await?;
        logged(&self.log, "RemoveContainer", removed)?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ProcessStarted> {
        let stdio = stdio(req.stdio.as_ref());
        let containers = Arc::clone(&self.containers);
        let pid = detached(async move {
            containers
                .exec(&req.container_id, &req.exec_id, &req.process, stdio)
                .await
        })
        .await?;
        started(logged(&self.log, "ExecProcess", pid)?)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let r = self
            .containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all);
        logged(&self.log, "SignalProcess", r)?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let status = self.containers.wait(&req.container_id, &req.exec_id).await;
        let exit_status = logged(&self.log, "WaitProcess", status)?;
        Ok(WaitProcessResponse {
            exit_status,
            oom_kills: self.containers.oom_kills(&req.container_id),
            ..Default::default()
        })
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let pids = logged(
            &self.log,
            "ListProcesses",
            self.containers.list_processes(&req.container_id),
        )?;
        Ok(ListProcessesResponse {
            pids,
            ..Default::default()
        })
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let paused =
            detached(async move { containers.set_paused(&req.container_id, true).await }).await?;
        logged(&self.log, "PauseContainer", paused)?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let resumed =
            detached(async move { containers.set_paused(&req.container_id, false).await }).await?;
        logged(&self.log, "ResumeContainer", resumed)?;
        Ok(Empty::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let updated =
            detached(async move { containers.update(&req.container_id, &req.resources).await })
                .await?;
        logged(&self.log, "UpdateContainer", updated)?;
        Ok(Empty::new())
    }

    async fn sync_volume(
        &self,
        _ctx: &TtrpcContext,
        req: SyncVolumeRequest,
    ) -> ttrpc::Result<Empty> {
        let containers = Arc::clone(&self.containers);
        let synced = detached(async move {
            let source = std::path::PathBuf::from(&req.source);
            containers
                .sync_volume(&req.container_id, &source, &req.data_target)
                .await
        })
        .await?;
        logged(&self.log, "SyncVolume", synced)?;
        Ok(Empty::new())
    }

    async fn container_stats(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ContainerStatsResponse> {
        let figures = self.containers.stats(&req.container_id).await;
        Ok(stats_response(logged(
            &self.log,
            "ContainerStats",
            figures,
        )?))
    }

    async fn wait_oom_kills(&self, _ctx: &TtrpcContext, req: OomKills) -> ttrpc::Result<OomKills> {
        let counts = self
            .containers
            .wait_oom_kills(&req.counts, husk_protocol::OOM_WAIT)
            .await;
        Ok(OomKills {
            counts,
            ..Default::default()
        })
    }

    async fn pod_stats(
        &self,
        _ctx: &TtrpcContext,
        _req: Empty,
    ) -> ttrpc::Result<ContainerStatsResponse> {
        let figures = self.containers.pod_stats().await;
        Ok(stats_response(logged(&self.log, "PodStats", figures)?))
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let r =
            self.containers
                .resize_terminal(&req.container_id, &req.exec_id, req.rows, req.cols);
        logged(&self.log, "TtyWinResize", r)?;
        Ok(Empty::new())
    }

    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        logged(
            &self.log,
            "CloseStdin",
            self.containers.close_stdin(&req.container_id, &req.exec_id),
        )?;
        Ok(Empty::new())
    }
}

fn stats_response(figures: crate::container::stats::Figures) -> ContainerStatsResponse {
    let io = figures
        .io
        .into_iter()
        .map(|d| IoDeviceStats {
            major: d.major,
            minor: d.minor,
            rbytes: d.rbytes,
            wbytes: d.wbytes,
            rios: d.rios,
            wios: d.wios,
            ..Default::default()
        })
        .collect();
    ContainerStatsResponse {
        counters: figures.counters,
        io,
        ..Default::default()
    }
}
