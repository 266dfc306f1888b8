//! The pod run: select the backend, launch the VM, wait for the agent, run one container,
//! tear everything down (also on failure).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use husk_hypervisor::builtin::VMM_BINARY;
use husk_hypervisor::{BackendChoice, HostProbe, VmHandle, VmSpec};
use husk_protocol::agent::Stdio;
use husk_protocol::io_stream::{StreamHeader, StreamKind};
use husk_shim::agent::{Agent, AgentClient};
use husk_shim::config::Config;
use husk_shim::container_files::RootfsSource;
use husk_shim::pod::SHARED_FS_TAG;
use husk_shim::pod_dir::PodDir;
use husk_shim::sizing::pod_size;
use husk_tests::nested::smaps;
use oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec};
use slog::Logger;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout};

use crate::Args;
use crate::report::Report;

/// What the container prints.
const GREETING: &str = "hello from a nested husk pod";
const CONTAINER_ID: &str = "c1";
/// Bound on the container's whole life (create, output, exit).
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest gets to power off before the monitor is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(5);

pub async fn run(args: &Args) -> Result<Report> {
    let mut config = Config::load(&args.config)?;
    config.hypervisor.backend =
        serde_json::from_value::<BackendChoice>(serde_json::Value::String(args.backend.clone()))
            .with_context(|| {
                format!(
                    "hypervisor.backend = {:?} is not a backend this husk knows",
                    args.backend
                )
            })?;
    let log = husk_shim::logger::stderr_logger(false);
    let selection = husk_hypervisor::select::select_with(
        config.hypervisor.backend,
        &config.hypervisor.qemu_path,
        args.vmm.as_deref().unwrap_or(VMM_BINARY),
        config.hypervisor.software_emulation(),
        &HostProbe::default(),
    )?;
    let backend = selection.vmm.name();
    eprintln!("nested_pod: backend {backend}: {}", selection.reason);
    let dir = PodDir::new(&args.state_dir, &args.id);
    dir.create()?;
    let started = Instant::now();
    let vm = match selection
        .vmm
        .launch(&vm_spec(args, &dir, &config), &log)
        .await
    {
        Ok(vm) => vm,
        Err(e) => {
            let _ = dir.destroy();
            return Err(e).context(format!("launching the VM with {backend}"));
        }
    };
    let launch = started.elapsed();
    let result = drive(args, &config, &dir, vm.as_ref(), started, &log).await;
    vm.stop(POWEROFF_GRACE).await;
    let destroyed = dir.destroy();
    let mut report = result.map_err(|e| {
        let diag = vm.diagnostics();
        e.context(format!("{backend}: VMM output: {diag}"))
    })?;
    destroyed.context("removing the pod directory")?;
    report.requested = args.backend.clone();
    report.backend = backend;
    report.reason = selection.reason;
    report.launch = launch;
    Ok(report)
}

/// The shim's VM description with the configured default size (no CRI annotations).
fn vm_spec(args: &Args, dir: &PodDir, config: &Config) -> VmSpec {
    let host_cpus = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let size = pod_size(&HashMap::new(), &config.hypervisor, host_cpus);
    husk_shim::pod::vm_spec(&args.id, dir, config, &size, Vec::new())
}

/// Everything after the launch; the caller stops the VM whatever happens here.
async fn drive(
    args: &Args,
    config: &Config,
    dir: &PodDir,
    vm: &dyn VmHandle,
    started: Instant,
    log: &Logger,
) -> Result<Report> {
    let deadline = Instant::now() + config.connect_timeout();
    let (agent, check) = AgentClient::connect(
        &dir.vsock_uds(),
        deadline,
        vm.exited(),
        config.rpc_timeout(),
    )
    .await
    .context("waiting for the guest agent")?;
    let agent_ready = started.elapsed();
    slog::info!(log, "agent ready"; "after_ms" => agent_ready.as_millis());
    let guest_kib = u64::from(config.hypervisor.memory_mib) * 1024;
    let vmm = smaps::of_process(vm.pid(), guest_kib)?;
    let helpers = vm
        .processes()
        .into_iter()
        .filter(|(_, pid)| *pid != vm.pid())
        .map(|(role, pid)| format!("{role}:{pid}:{}", smaps::pss_of(pid)))
        .collect();
    agent
        .create_sandbox(&args.id, "nested", SHARED_FS_TAG)
        .await
        .context("CreateSandbox")?;
    let (exit_status, output) =
        timeout(CONTAINER_TIMEOUT, run_container(&agent, dir, &args.busybox))
            .await
            .with_context(|| {
                format!("the container did not finish within {CONTAINER_TIMEOUT:?}")
            })??;
    let output_done = started.elapsed();
    if let Err(e) = agent.destroy_sandbox().await {
        slog::warn!(log, "DestroySandbox failed"; "error" => %e);
    }
    Ok(Report {
        requested: String::new(),
        backend: String::new(),
        reason: String::new(),
        launch: Duration::ZERO,
        agent_ready,
        guest_uptime_at_agent_ms: check.boot_to_agent_ms,
        output_done,
        output,
        exit_status,
        vmm,
        helpers,
    })
}

/// A busybox rootfs in the pod share, `busybox echo` in it; returns exit status and stdout.
async fn run_container(agent: &dyn Agent, dir: &PodDir, busybox: &Path) -> Result<(i32, String)> {
    // Like a bundle's root.path: a directory the shim's own code bind-mounts into the share.
    let image = dir.root().join("image");
    let bin = image.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    std::fs::copy(busybox, bin.join("busybox"))
        .with_context(|| format!("copying {} into the rootfs", busybox.display()))?;
    husk_shim::container_files::prepare(dir, CONTAINER_ID, &RootfsSource::Bind(image), &[])
        .context("mounting the rootfs into the pod share")?;
    let (json, binds) = husk_shim::guest_spec::for_guest(container_spec()?, CONTAINER_ID, None)?;
    ensure!(binds.is_empty(), "the test spec has no bind mounts");
    let mut stdout = agent
        .open_stream(&StreamHeader {
            kind: StreamKind::Stdout,
            container_id: CONTAINER_ID.into(),
            exec_id: String::new(),
        })
        .await?;
    let mut stdio = Stdio::new();
    stdio.stdout = true;
    agent
        .create_container(CONTAINER_ID, json, stdio)
        .await
        .context("CreateContainer")?;
    agent
        .start_container(CONTAINER_ID)
        .await
        .context("StartContainer")?;
    let mut out = Vec::new();
    stdout
        .read_to_end(&mut out)
        .await
        .context("reading the container's stdout")?;
    let status = agent
        .wait_process(CONTAINER_ID, "")
        .await
        .context("WaitProcess")?;
    agent
        .remove_container(CONTAINER_ID)
        .await
        .context("RemoveContainer")?;
    let output = String::from_utf8_lossy(&out).into_owned();
    if output.trim() != GREETING {
        bail!("the container printed {output:?} (exit status {status}), expected {GREETING:?}");
    }
    Ok((status, output))
}

/// The runtime-spec defaults (namespaces, mounts, capabilities as runc would get them)
/// with a writable busybox root.
fn container_spec() -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_hostname(Some("nested".into()));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    let process = ProcessBuilder::default()
        .args(vec!["/bin/busybox".into(), "echo".into(), GREETING.into()])
        .cwd("/")
        .env(vec!["PATH=/bin".to_owned()])
        .build()?;
    spec.set_process(Some(process));
    Ok(spec)
}
