//! A pod whose VMM dies (SIGKILL of its QEMU): CRI sees the containers exit and no call
//! hangs, the shim exits within 5 s (a Sandbox API pod's shim once RemovePodSandbox shut
//! it down; the pod goes NotReady at once), StopPodSandbox/RemovePodSandbox still succeed
//! and nothing is left behind.

mod cri_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cri_common::{running, wait_exited, wait_until};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriResult, CriWorld};
use k8s_cri::v1::PodSandboxState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every CRI call after the fault must answer within this.
const CALL_BOUND: Duration = Duration::from_secs(15);

/// Runs a CRI call and checks it answered within [`CALL_BOUND`].
fn bounded<T>(what: &str, f: impl FnOnce() -> CriResult<T>) -> Result<CriResult<T>> {
    let start = Instant::now();
    let r = f();
    let took = start.elapsed();
    ensure!(took < CALL_BOUND, "{what} took {took:?} after the VMM died");
    Ok(r)
}

#[test]
fn cri_killed_vmm_ends_the_pod() -> Result<()> {
    cri_killed_vmm_ends_the_pod_on(ContainerdFlavour::System, "cri-deadvmm")
}

#[test]
fn cri_killed_vmm_ends_the_pod_sandbox_api() -> Result<()> {
    cri_killed_vmm_ends_the_pod_on(ContainerdFlavour::V2SandboxApi, "cri-deadvmm-sb")
}

fn cri_killed_vmm_ends_the_pod_on(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("deadvmm")?;
    let a = w.start_container(&pod, &cfg, "a", &["sleep", "1000000"])?;
    let b = w.start_container(&pod, &cfg, "b", &["sleep", "1000000"])?;
    for id in [&a, &b] {
        running(c, id)?;
    }
    let vmms = CriWorld::vmms(&pod);
    ensure!(
        vmms.len() == 1,
        "expected one QEMU for {pod}, found {}",
        vmms.len()
    );
    ensure!(
        !CriWorld::processes("containerd-shim-husk-v2", &pod).is_empty(),
        "no shim found for pod {pod}"
    );
    let killed = Instant::now();
    kill(Pid::from_raw(vmms[0].pid), Signal::SIGKILL)?;

    // A Sandbox API pod's shim stays for containerd's StopSandbox and ShutdownSandbox; it
    // tells containerd through WaitSandbox that the pod is gone.
    let sandbox_api = flavour == ContainerdFlavour::V2SandboxApi;
    let shim_gone = wait_until(
        "the shim (unless the Sandbox API keeps it) and virtiofsd exiting after the VMM was killed",
        Duration::from_secs(5),
        || {
            (sandbox_api || CriWorld::processes("containerd-shim-husk-v2", &pod).is_empty())
                && CriWorld::processes("virtiofsd", &pod).is_empty()
        },
    )?;
    eprintln!("shim gone {shim_gone:?} after SIGKILL of the VMM");
    if sandbox_api {
        wait_until(
            "PodSandboxStatus saying NOTREADY after the VMM was killed",
            Duration::from_secs(10),
            || {
                c.pod_sandbox_status(&pod, false)
                    .ok()
                    .and_then(|s| s.status)
                    .is_some_and(|s| s.state == PodSandboxState::SandboxNotready as i32)
            },
        )?;
    }
    for id in [&a, &b] {
        bounded("ContainerStatus", || c.container_status(id))??;
        let s = wait_exited(c, id, Duration::from_secs(10))?;
        eprintln!(
            "container {id}: exit {} reason {:?} ({:?} after the kill)",
            s.exit_code,
            s.reason,
            killed.elapsed()
        );
        ensure!(
            s.exit_code != 0,
            "a container killed with its VM reports exit 0"
        );
    }
    let status = bounded("PodSandboxStatus", || c.pod_sandbox_status(&pod, false))??;
    eprintln!(
        "pod state after the fault: {:?}",
        status.status.map(|s| s.state)
    );
    bounded("ListContainers", || c.list_containers(None))??;
    bounded("ListPodSandbox", || c.list_pod_sandbox(None))??;
    for id in [&a, &b] {
        bounded("StopContainer", || c.stop_container(id, 2))??;
        bounded("RemoveContainer", || c.remove_container(id))??;
    }
    bounded("StopPodSandbox", || c.stop_pod_sandbox(&pod))??;
    bounded("RemovePodSandbox", || c.remove_pod_sandbox(&pod))??;
    wait_until(
        "the shim exiting after RemovePodSandbox",
        Duration::from_secs(5),
        || CriWorld::processes("containerd-shim-husk-v2", &pod).is_empty(),
    )?;
    w.finish()?;
    Ok(())
}
