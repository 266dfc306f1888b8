//! A pod: its VM, the agent inside, and its host state (directory and cgroup). One per
//! shim. [`Pod::boot`] makes the real one; the parts are traits ([`VmHandle`], [`Agent`],
//! [`PodHost`]) so the task state machine can be tested with fakes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use husk_hypervisor::{
    HostProbe, IdRange, NetSpec, SharedFsSpec, VmHandle, VmSpec, VsockSpec, spec::GUEST_CID,
};
use slog::{Logger, info, warn};
use thiserror::Error;
use tokio::time::Instant;

use crate::agent::{Agent, AgentClient, AgentError};
use crate::config::Config;
use crate::container_files::{self, ContainerFilesError, RootfsSource};
use crate::guest_spec::HostBind;
use crate::network::{NetworkError, PodNetwork};
use crate::pod_cgroup::{PodCgroup, PodCgroupError};
use crate::pod_dir::{PodDir, PodDirError};
use crate::sandbox::{PodFileDirs, PodFiles, PodFilesError, pod_files};
use crate::sizing::PodSize;
use crate::start_phases::{Mark, StartTimeline};
use crate::volume_watch::VolumeWatch;

/// virtio-fs tag of the pod share, mounted by the agent at `SHARED_DIR_GUEST`.
pub const SHARED_FS_TAG: &str = "husk";
/// How long the guest gets to power off after DestroySandbox before the VMM is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum PodError {
    #[error(transparent)]
    Dir(#[from] PodDirError),
    #[error(transparent)]
    Vmm(#[from] husk_hypervisor::VmmError),
    #[error(transparent)]
    Cgroup(#[from] PodCgroupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{source}{diagnostics}")]
    Agent {
        source: AgentError,
        diagnostics: String,
    },
}

pub struct Pod {
    pub id: String,
    pub vm: Box<dyn VmHandle>,
    pub agent: Box<dyn Agent>,
    pub(crate) host: Box<dyn PodHost>,
    /// Watches atomically updated volumes ([`crate::pod_volumes`]); none if inotify failed.
    pub(crate) volumes: Option<Arc<VolumeWatch>>,
    /// How the pod's start went, logged when its first process starts.
    start: std::sync::Mutex<StartTimeline>,
    pub(crate) log: Logger,
}

/// The pod's state on the host besides its VM: where container files are prepared, and
/// what is removed once the VM is gone.
#[async_trait]
pub trait PodHost: Send + Sync {
    /// Mounts a container's rootfs and bind-mount sources into the pod share.
    async fn prepare_container_files(
        &self,
        container_id: &str,
        rootfs: RootfsSource,
        binds: Vec<HostBind>,
    ) -> Result<(), ContainerFilesError>;
    /// Unmounts and removes a container's files from the pod share.
    async fn remove_container_files(&self, container_id: &str) -> Result<(), PodDirError>;
    /// The host path of `relative` (relative to the share's root), if the share is on
    /// this host.
    fn share_path(&self, relative: &Path) -> Option<PathBuf> {
        let _ = relative;
        None
    }
    /// Writes a Sandbox API pod's files ([`crate::sandbox::pod_files`]).
    async fn write_pod_files(&self, files: &PodFiles) -> Result<PodFileDirs, PodFilesError>;
    /// Removes everything (after the VM stopped). Never fails: what cannot be cleaned is
    /// logged.
    async fn remove(&self);
}

/// The real host state: the pod directory ([`PodDir`]) and the pod cgroup.
struct HostState {
    dir: PodDir,
    cgroup: PodCgroup,
    /// Taken (and detached) when the host state is removed.
    network: tokio::sync::Mutex<Option<PodNetwork>>,
    log: Logger,
}

impl Pod {
    /// A pod from its parts (tests assemble fakes this way).
    pub fn new(
        id: &str,
        vm: Box<dyn VmHandle>,
        agent: Box<dyn Agent>,
        host: Box<dyn PodHost>,
        log: &Logger,
    ) -> Self {
        let volumes = match VolumeWatch::new() {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                warn!(log, "volume updates will not reach inotify watchers"; "error" => %e);
                None
            }
        };
        Self {
            id: id.to_string(),
            vm,
            agent,
            host,
            volumes,
            start: std::sync::Mutex::new(StartTimeline::default()),
            log: log.clone(),
        }
    }

    /// Records a step of the pod's start the first time it happens (later containers do
    /// not move it), at `at` or now; logs the phases once the first process started.
    pub fn mark_start(&self, mark: Mark, at: Option<SystemTime>) {
        if let Ok(mut t) = self.start.lock() {
            if !t.has(mark) {
                t.mark_at(mark, at.unwrap_or_else(SystemTime::now));
            }
            t.log_once(&self.log);
        }
    }

    /// Boots the pod VM and waits for its agent. Everything started is torn down again on
    /// failure.
    /// `cgroup`: the pod cgroup's path ([`crate::pod_cgroup::path_for`]); the shim joins it
    /// before anything is started. `netns`: the pod's network namespace, whose interfaces
    /// the VM takes over ([`PodNetwork`]); without one the VM has no network device.
    pub async fn boot(
        id: &str,
        hostname: &str,
        cgroup: &str,
        netns: Option<&Path>,
        config: &Config,
        size: &PodSize,
        log: &Logger,
    ) -> Result<Self, PodError> {
        let log = log.new(slog::o!("sandbox" => id.to_string()));
        let mut timeline = StartTimeline::default();
        timeline.mark(Mark::Requested);
        let selection = husk_hypervisor::select_with(
            config.hypervisor.backend,
            &config.hypervisor.qemu_path,
            &config.hypervisor.vmm_path,
            config.hypervisor.software_emulation(),
            &HostProbe::default(),
        )?;
        info!(log, "hypervisor selected"; "vmm" => selection.vmm.name(), "reason" => &selection.reason);
        info!(log, "pod VM size"; "vcpus" => size.vcpus, "memory_mib" => size.memory_mib, "from" => size.source);
        let cgroup = PodCgroup::create_and_join(cgroup)?;
        info!(log, "pod cgroup joined"; "cgroup" => cgroup.path());
        let host = HostState {
            dir: PodDir::new(&config.runtime.state_dir, id),
            cgroup,
            network: tokio::sync::Mutex::new(None),
            log: log.clone(),
        };
        let started = Self::start(
            id,
            hostname,
            netns,
            config,
            size,
            &*selection.vmm,
            &host,
            &mut timeline,
            &log,
        );
        match started.await {
            Ok((vm, agent)) => {
                let pod = Self::new(id, vm, Box::new(agent), Box::new(host), &log);
                if let Ok(mut t) = pod.start.lock() {
                    *t = timeline;
                }
                Ok(pod)
            }
            Err(e) => {
                host.remove().await;
                Err(e)
            }
        }
    }

    /// [`Self::boot`] once the pod's host state exists; on failure the caller removes it.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        id: &str,
        hostname: &str,
        netns: Option<&Path>,
        config: &Config,
        size: &PodSize,
        vmm: &dyn husk_hypervisor::Vmm,
        host: &HostState,
        timeline: &mut StartTimeline,
        log: &Logger,
    ) -> Result<(Box<dyn VmHandle>, AgentClient), PodError> {
        host.dir.create()?;
        let (mut net, mut interfaces) = (Vec::new(), Vec::new());
        if let Some(netns) = netns {
            let network = PodNetwork::attach(netns, log).await?;
            net = network.vm_devices().map_err(|source| {
                PodError::Vmm(husk_hypervisor::VmmError::Spawn {
                    what: "the VM's network (duplicating a tap)",
                    source,
                })
            })?;
            interfaces = network.interfaces().map(|i| i.to_agent()).collect();
            *host.network.lock().await = Some(network);
        }
        let started = Instant::now();
        timeline.mark(Mark::LaunchBegun);
        let vm = vmm
            .launch(&vm_spec(id, &host.dir, config, size, net), log)
            .await?;
        let deadline = Instant::now() + config.connect_timeout();
        let connected = AgentClient::connect(
            &host.dir.vsock_uds(),
            deadline,
            vm.exited(),
            config.rpc_timeout(),
        )
        .await;
        let (agent, check) = match connected {
            Ok(c) => c,
            Err(source) => return Err(Self::failed_vm(vm, source, log).await),
        };
        let ready = started.elapsed();
        timeline.launched(vm.launch_times());
        timeline.agent_connected(&check, SystemTime::now());
        if let Err(source) = set_up_guest(&agent, id, hostname, size, interfaces).await {
            return Err(Self::failed_vm(vm, source, log).await);
        }
        timeline.mark(Mark::SandboxCreated);
        if let Some(network) = host.network.lock().await.as_mut() {
            // The pod is usable without it; PortForward then fails to dial, and this says why.
            if let Err(e) = network.forward_ports(host.dir.vsock_uds()) {
                warn!(log, "CRI PortForward will not reach this pod"; "error" => %e);
            }
        }
        info!(log, "pod VM ready";
            "boot_to_agent_ms" => u64::try_from(ready.as_millis()).unwrap_or(u64::MAX),
            "guest_uptime_at_agent_ms" => check.boot_to_agent_ms,
            "guest_kernel" => &check.kernel_release,
            "agent_version" => &check.agent_version,
            "vmm_pid" => vm.pid());
        Ok((vm, agent))
    }

    /// Stops a VM whose agent did not come up, with what the VMM said.
    async fn failed_vm(vm: Box<dyn VmHandle>, source: AgentError, log: &Logger) -> PodError {
        vm.stop(Duration::ZERO).await;
        let diag = vm.diagnostics();
        let diagnostics = if diag.is_empty() {
            String::new()
        } else {
            format!("; VMM output: {diag}")
        };
        warn!(log, "pod VM failed to start"; "error" => %source, "diagnostics" => &diag);
        PodError::Agent {
            source,
            diagnostics,
        }
    }

    pub async fn prepare_container_files(
        &self,
        container_id: &str,
        rootfs: RootfsSource,
        binds: Vec<HostBind>,
    ) -> Result<(), ContainerFilesError> {
        self.host
            .prepare_container_files(container_id, rootfs, binds)
            .await
    }

    pub async fn remove_container_files(&self, container_id: &str) -> Result<(), PodDirError> {
        self.forget_volumes(container_id);
        self.host.remove_container_files(container_id).await
    }

    /// Asks the guest to power off, stops the VMM and its helpers, and removes the pod's
    /// host state. Never fails: whatever cannot be cleaned is logged.
    pub async fn shutdown(&self) {
        if let Some(watch) = self.volumes.as_ref() {
            watch.close();
        }
        let vm_alive = self.vm.exited().borrow().is_none();
        if vm_alive {
            if let Err(e) = self.agent.destroy_sandbox().await {
                warn!(self.log, "agent did not confirm sandbox teardown"; "error" => %e);
            }
        }
        self.vm.stop(POWEROFF_GRACE).await;
        self.host.remove().await;
        info!(self.log, "pod stopped");
    }
}

#[async_trait]
impl PodHost for HostState {
    /// Off the async runtime: mounts block, on a slow snapshotter for seconds.
    async fn prepare_container_files(
        &self,
        container_id: &str,
        rootfs: RootfsSource,
        binds: Vec<HostBind>,
    ) -> Result<(), ContainerFilesError> {
        let (dir, id) = (self.dir.clone(), container_id.to_string());
        tokio::task::spawn_blocking(move || container_files::prepare(&dir, &id, &rootfs, &binds))
            .await
            .unwrap_or_else(|join| Err(PodDirError::Worker(join).into()))
    }

    /// Off the async runtime: unmounts and directory walks block.
    async fn remove_container_files(&self, container_id: &str) -> Result<(), PodDirError> {
        let (dir, id) = (self.dir.clone(), container_id.to_string());
        match tokio::task::spawn_blocking(move || dir.remove_container(&id)).await {
            Ok(result) => result,
            Err(join) => Err(PodDirError::Worker(join)),
        }
    }

    fn share_path(&self, relative: &Path) -> Option<PathBuf> {
        Some(self.dir.host().join(relative))
    }

    /// Off the async runtime: writes and a mount.
    async fn write_pod_files(&self, files: &PodFiles) -> Result<PodFileDirs, PodFilesError> {
        let (dir, files) = (self.dir.pod_files(), files.clone());
        tokio::task::spawn_blocking(move || pod_files::write(&dir, &files))
            .await
            .unwrap_or_else(|join| {
                Err(PodFilesError::Write {
                    path: PathBuf::new(),
                    source: std::io::Error::other(join),
                })
            })
    }

    async fn remove(&self) {
        // The VM is gone: its taps' redirects go, then the taps.
        if let Some(network) = self.network.lock().await.take() {
            network.detach().await;
        }
        let dir = self.dir.clone();
        let destroyed = tokio::task::spawn_blocking(move || dir.destroy())
            .await
            .unwrap_or_else(|join| Err(PodDirError::Worker(join)));
        if let Err(e) = destroyed {
            warn!(self.log, "cleaning up the pod directory"; "error" => %e);
        }
        // Waits (bounded) for killed leftovers to leave: off the async runtime.
        let (cgroup, log) = (self.cgroup.clone(), self.log.clone());
        let _ = tokio::task::spawn_blocking(move || remove_cgroup(&cgroup, &log)).await;
    }
}

/// Removes the pod cgroup once nothing of the pod runs; a failure is logged (the shim is
/// tearing down and has no one to report to).
fn remove_cgroup(cgroup: &PodCgroup, log: &Logger) {
    if let Err(e) = cgroup.remove() {
        warn!(log, "removing the pod cgroup"; "error" => %e);
    }
}

/// The VM description for pod `id`: the configured kernel and initramfs, the agent's log
/// level, `size`, and the pod directory's sockets and shared directory.
pub fn vm_spec(
    id: &str,
    dir: &PodDir,
    config: &Config,
    size: &PodSize,
    net: Vec<NetSpec>,
) -> VmSpec {
    let h = &config.hypervisor;
    VmSpec {
        name: id.chars().take(32).collect(),
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        kernel_params: format!(
            "{}={} {}",
            husk_protocol::LOG_LEVEL_CMDLINE_KEY,
            config.agent.log_level,
            h.kernel_params
        ),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        run_dir: dir.root().to_path_buf(),
        vsock: VsockSpec {
            guest_cid: GUEST_CID,
            uds_path: dir.vsock_uds(),
        },
        shared_fs: SharedFsSpec {
            tag: SHARED_FS_TAG.into(),
            shared_dir: dir.shared(),
            virtiofsd: config.virtiofs.virtiofsd_path.clone(),
            cache: config.virtiofs.cache.clone(),
        },
        vmm_ids: IdRange {
            first: h.jail.id_first,
            count: h.jail.id_count,
            lock_dir: h.jail.id_lock_dir.clone(),
        },
        net,
    }
}

/// The pod-wide guest set-up: the sandbox, then its network (if it has one).
pub async fn set_up_guest(
    agent: &AgentClient,
    id: &str,
    hostname: &str,
    size: &PodSize,
    interfaces: Vec<husk_protocol::agent::Interface>,
) -> Result<(), AgentError> {
    agent
        .create_sandbox(id, hostname, SHARED_FS_TAG, size.guest_resources())
        .await?;
    if !interfaces.is_empty() {
        agent.configure_network(interfaces).await?;
    }
    Ok(())
}
