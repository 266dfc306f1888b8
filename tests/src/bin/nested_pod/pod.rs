//! One pod VM booted the way the shim boots it — backend selection, the pod directory, the
//! pod network (if it has a namespace), the VM spec, the agent, the guest set-up — and the
//! containers the driver runs in it; torn down by [`Pod::shutdown`], also on failure.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_hypervisor::builtin::VMM_BINARY;
use husk_hypervisor::{BackendChoice, HostProbe, VmHandle, Vmm};
use husk_protocol::agent::Stdio;
use husk_protocol::io_stream::{StreamHeader, StreamKind};
use husk_shim::agent::{Agent, AgentClient};
use husk_shim::config::Config;
use husk_shim::container_files::RootfsSource;
use husk_shim::network::PodNetwork;
use husk_shim::pod_dir::PodDir;
use husk_shim::sizing::pod_size;
use husk_shim::start_phases::{Mark, StartTimeline};
use husk_tests::nested::smaps::{self, Memory};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespaceType, Process, ProcessBuilder, RootBuilder,
    Spec,
};
use slog::Logger;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout};

use crate::Args;

/// How long the guest gets to power off before the monitor is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(5);
/// busybox applets the containers call by name (linked to `/bin/busybox` in each rootfs).
const APPLETS: [&str; 10] = [
    "sh", "echo", "mkdir", "httpd", "nc", "wc", "dd", "ping", "sleep", "true",
];
/// The pods' hostname.
const HOSTNAME: &str = "nested";

/// The configured backend, selected once per run as the shim selects it.
pub struct Backend {
    pub config: Config,
    vmm: Box<dyn Vmm>,
    /// The backend's own name (`qemu-kvm`, `builtin`, …).
    pub name: String,
    /// Why the selection picked it.
    pub reason: String,
    pub log: Logger,
}

impl Backend {
    pub fn select(args: &Args) -> Result<Self> {
        let mut config = Config::load(&args.config)?;
        config.hypervisor.backend = serde_json::from_value::<BackendChoice>(
            serde_json::Value::String(args.backend.clone()),
        )
        .with_context(|| {
            format!(
                "hypervisor.backend = {:?} is not a backend this husk knows",
                args.backend
            )
        })?;
        let selection = husk_hypervisor::select::select_with(
            config.hypervisor.backend,
            &config.hypervisor.qemu_path,
            args.vmm.as_deref().unwrap_or(VMM_BINARY),
            config.hypervisor.software_emulation(),
            &HostProbe::default(),
        )?;
        let name = selection.vmm.name();
        eprintln!("nested_pod: backend {name}: {}", selection.reason);
        Ok(Self {
            config,
            vmm: selection.vmm,
            name,
            reason: selection.reason,
            log: husk_shim::logger::stderr_logger(false),
        })
    }
}

/// A running pod VM whose agent answered.
pub struct Pod {
    dir: PodDir,
    /// The containers' rootfs directories, on the state directory's filesystem (like
    /// bundles, not on the pod directory's small tmpfs).
    images: std::path::PathBuf,
    vm: Box<dyn VmHandle>,
    agent: AgentClient,
    network: Option<PodNetwork>,
    /// When the launch began.
    pub started: Instant,
    /// `Vmm::launch` returned (from [`Self::started`]).
    pub launch: Duration,
    /// The agent answered its first health check (from [`Self::started`]).
    pub agent_ready: Duration,
    /// The guest's uptime when the agent started, as the agent reports it.
    pub guest_uptime_at_agent_ms: u64,
    /// The boot's phases, as the shim logs them.
    pub timeline: StartTimeline,
    log: Logger,
}

impl Pod {
    /// Boots pod `id` under `state_dir`; with `netns`, the VM takes over the interfaces in
    /// that network namespace as the shim's does for a CRI pod.
    pub async fn boot(
        b: &Backend,
        state_dir: &Path,
        id: &str,
        netns: Option<&Path>,
    ) -> Result<Self> {
        let dir = PodDir::new(state_dir, id);
        dir.create()?;
        let network = match netns {
            Some(netns) => match PodNetwork::attach(netns, &b.log).await {
                Ok(n) => Some(n),
                Err(e) => {
                    abandon(None, &dir).await;
                    return Err(e).context("attaching the pod network");
                }
            },
            None => None,
        };
        let started = Instant::now();
        let mut timeline = StartTimeline::default();
        timeline.mark(Mark::LaunchBegun);
        let host_cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let size = pod_size(&HashMap::new(), &b.config.hypervisor, host_cpus);
        let launched = async {
            let net = match &network {
                Some(n) => n.vm_devices().context("duplicating the taps")?,
                None => Vec::new(),
            };
            let spec = husk_shim::pod::vm_spec(id, &dir, &b.config, &size, net);
            b.vmm
                .launch(&spec, &b.log)
                .await
                .with_context(|| format!("launching the VM with {}", b.name))
        }
        .await;
        let vm = match launched {
            Ok(vm) => vm,
            Err(e) => {
                abandon(network, &dir).await;
                return Err(e);
            }
        };
        let launch = started.elapsed();
        timeline.launched(vm.launch_times());
        let connected = async {
            let deadline = Instant::now() + b.config.connect_timeout();
            let (agent, check) = AgentClient::connect(
                &dir.vsock_uds(),
                deadline,
                vm.exited(),
                b.config.rpc_timeout(),
            )
            .await
            .context("waiting for the guest agent")?;
            let agent_ready = started.elapsed();
            timeline.agent_connected(&check, std::time::SystemTime::now());
            let interfaces = network
                .iter()
                .flat_map(PodNetwork::interfaces)
                .map(|i| i.to_agent())
                .collect();
            husk_shim::pod::set_up_guest(&agent, id, HOSTNAME, &size, interfaces)
                .await
                .context("setting up the guest (CreateSandbox, ConfigureNetwork)")?;
            timeline.mark(Mark::SandboxCreated);
            anyhow::Ok((agent, check, agent_ready))
        }
        .await;
        match connected {
            Ok((agent, check, agent_ready)) => {
                slog::info!(b.log, "agent ready"; "after_ms" => agent_ready.as_millis());
                Ok(Self {
                    images: images_dir(state_dir, id),
                    dir,
                    vm,
                    agent,
                    network,
                    started,
                    launch,
                    agent_ready,
                    guest_uptime_at_agent_ms: check.boot_to_agent_ms,
                    timeline,
                    log: b.log.clone(),
                })
            }
            Err(e) => {
                let e = e.context(format!("VMM output: {}", vm.diagnostics()));
                vm.stop(Duration::ZERO).await;
                abandon(network, &dir).await;
                Err(e)
            }
        }
    }

    /// The monitor's memory (guest RAM of `guest_kib` told apart) and the other host
    /// processes of the VM as `role:pid:pss_kib`.
    pub fn memory(&self, guest_kib: u64) -> Result<(Memory, Vec<String>)> {
        let vmm = smaps::of_process(self.vm.pid(), guest_kib)?;
        let helpers = self
            .vm
            .processes()
            .into_iter()
            .filter(|(_, pid)| *pid != self.vm.pid())
            .map(|(role, pid)| format!("{role}:{pid}:{}", smaps::pss_of(pid)))
            .collect();
        Ok((vmm, helpers))
    }

    /// The pod's agent.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The host directory that is container `cid`'s rootfs.
    pub fn rootfs_path(&self, cid: &str) -> std::path::PathBuf {
        self.images.join(cid)
    }

    /// Runs container `cid` to its end within `within`; its exit status and how many
    /// bytes it wrote to stdout (read as they come, not kept).
    pub async fn run_container_counting(
        &self,
        cid: &str,
        argv: &[&str],
        within: Duration,
    ) -> Result<(i32, u64)> {
        let stream = self.create(cid, argv, true).await?;
        let counted = timeout(within, async {
            let mut bytes = 0u64;
            if let Some(mut s) = stream {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = s.read(&mut buf).await.context("reading stdout")?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
            }
            let status = self.agent.wait_process(cid, "").await?.status;
            anyhow::Ok((status, bytes))
        })
        .await
        .with_context(|| format!("{cid} did not finish within {within:?}"));
        self.agent
            .remove_container(cid)
            .await
            .context("RemoveContainer")?;
        counted?
    }

    /// What the monitor said, for error messages.
    pub fn diagnostics(&self) -> String {
        self.vm.diagnostics()
    }

    /// How the VM ended, if it has within `grace` (a guest's crash reaches the agent
    /// connection before its monitor's exit is seen).
    pub async fn ended(&self, grace: Duration) -> Option<String> {
        let mut exited = self.vm.exited();
        let _ = timeout(grace, exited.wait_for(Option::is_some)).await;
        exited.borrow().as_ref().map(|e| e.description.clone())
    }

    /// Creates container `cid` running `argv` in a busybox rootfs of the pod share; with
    /// `stdout`, returns the stream of its output.
    async fn create(
        &self,
        cid: &str,
        argv: &[&str],
        stdout: bool,
    ) -> Result<Option<tokio::net::UnixStream>> {
        // Like a bundle's root.path: a directory the shim's own code bind-mounts into the share.
        let image = self.rootfs_path(cid);
        let bin = image.join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .context("copying /bin/busybox into the rootfs")?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))
                .with_context(|| format!("linking {applet} to busybox"))?;
        }
        husk_shim::container_files::prepare(&self.dir, cid, &RootfsSource::Bind(image), &[])
            .context("mounting the rootfs into the pod share")?;
        let (json, _) = husk_shim::guest_spec::for_guest(container_spec(argv)?, cid, None)?;
        let stream = if stdout {
            Some(self.open_stdout(cid, "").await?)
        } else {
            None
        };
        let mut stdio = Stdio::new();
        stdio.stdout = stdout;
        self.agent
            .create_container(cid, json, stdio)
            .await
            .context("CreateContainer")?;
        self.agent
            .start_container(cid)
            .await
            .context("StartContainer")?;
        Ok(stream)
    }

    async fn open_stdout(&self, cid: &str, exec_id: &str) -> Result<tokio::net::UnixStream> {
        Ok(self
            .agent
            .open_stream(&StreamHeader {
                kind: StreamKind::Stdout,
                container_id: cid.into(),
                exec_id: exec_id.into(),
            })
            .await?)
    }

    /// Runs container `cid` to its end within `within`; its exit status and stdout.
    pub async fn run_container(
        &self,
        cid: &str,
        argv: &[&str],
        within: Duration,
    ) -> Result<(i32, String)> {
        let stream = self.create(cid, argv, true).await?;
        let result = self.collect(stream, cid, "", within).await;
        self.agent
            .remove_container(cid)
            .await
            .context("RemoveContainer")?;
        result
    }

    /// Starts container `cid` running `argv` in the background (it goes with the pod).
    pub async fn start_container(&self, cid: &str, argv: &[&str]) -> Result<()> {
        self.create(cid, argv, false).await.map(drop)
    }

    /// Runs `argv` in running container `cid` to its end within `within`; exit status and
    /// stdout.
    pub async fn exec(
        &self,
        cid: &str,
        exec_id: &str,
        argv: &[&str],
        within: Duration,
    ) -> Result<(i32, String)> {
        let stream = self.open_stdout(cid, exec_id).await?;
        let mut stdio = Stdio::new();
        stdio.stdout = true;
        let process = serde_json::to_vec(&process(argv)?)?;
        self.agent
            .exec_process(cid, exec_id, process, stdio)
            .await
            .with_context(|| format!("ExecProcess {argv:?}"))?;
        self.collect(Some(stream), cid, exec_id, within).await
    }

    async fn collect(
        &self,
        stream: Option<tokio::net::UnixStream>,
        cid: &str,
        exec_id: &str,
        within: Duration,
    ) -> Result<(i32, String)> {
        let finished = timeout(within, async {
            let mut out = Vec::new();
            if let Some(mut s) = stream {
                s.read_to_end(&mut out).await.context("reading stdout")?;
            }
            let status = self
                .agent
                .wait_process(cid, exec_id)
                .await
                .context("WaitProcess")?
                .status;
            anyhow::Ok((status, String::from_utf8_lossy(&out).into_owned()))
        })
        .await;
        finished.with_context(|| format!("{cid}/{exec_id} did not finish within {within:?}"))?
    }

    /// Powers the guest off, stops the monitor, takes the network back, removes the pod
    /// directory.
    pub async fn shutdown(self) -> Result<()> {
        if let Err(e) = self.agent.destroy_sandbox().await {
            slog::warn!(self.log, "DestroySandbox failed"; "error" => %e);
        }
        self.vm.stop(POWEROFF_GRACE).await;
        if let Some(exit) = self.vm.exited().borrow().as_ref() {
            slog::info!(self.log, "VM ended"; "how" => &exit.description, "requested" => exit.requested);
        }
        if let Some(n) = self.network {
            n.detach().await;
        }
        self.dir.destroy().context("removing the pod directory")?;
        match std::fs::remove_dir_all(&self.images) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context("removing the containers' rootfs directories")
            }
            _ => Ok(()),
        }
    }
}

/// Where pod `id`'s container images go: beside `state_dir`, whose pods mount small
/// tmpfs over it.
fn images_dir(state_dir: &Path, id: &str) -> std::path::PathBuf {
    let mut name = state_dir.file_name().unwrap_or_default().to_owned();
    name.push(".images");
    state_dir.with_file_name(name).join(id)
}

/// Undoes a boot that failed before the pod existed (the VM, if any, is stopped already).
async fn abandon(network: Option<PodNetwork>, dir: &PodDir) {
    if let Some(n) = network {
        n.detach().await;
    }
    let _ = dir.destroy();
}

fn process(argv: &[&str]) -> Result<Process> {
    // The runtime spec's default set, plus NET_RAW for ping (as Docker's default set has).
    let caps: std::collections::HashSet<Capability> = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
        Capability::NetRaw,
    ]
    .into();
    Ok(ProcessBuilder::default()
        .args(argv.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
        .cwd("/")
        .env(vec!["PATH=/bin".to_owned()])
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .build()?)
}

/// The runtime-spec defaults (namespaces, mounts as runc would get them) with a writable
/// busybox root running `argv`, in the pod's network.
fn container_spec(argv: &[&str]) -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(HOSTNAME.into()));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    spec.set_process(Some(process(argv)?));
    // As in a CRI pod, the container joins the pod's network (the VM's), not a new one.
    if let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    }
    Ok(spec)
}
