//! Stopping through CRI: StopContainer's grace period (SIGTERM, then SIGKILL), exit codes
//! and reasons in ContainerStatus, containers that exit on their own, StopPodSandbox
//! stopping the VM (also with containers still running), and RemovePodSandbox leaving
//! nothing behind.

mod cri_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cri_common::{running, state_name, stop_and_remove_pod, wait_exited, wait_no_vmm, wait_until};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use k8s_cri::v1::{ContainerState, ContainerStatus};

/// Grace period of the stubborn container.
const GRACE: u64 = 4;

#[test]
fn cri_stop_container_grace_period_exit_codes_and_reasons() -> Result<()> {
    cri_stop_container_grace_period_exit_codes_and_reasons_on(ContainerdFlavour::System, "cri-stop")
}

#[test]
fn cri_stop_container_grace_period_exit_codes_and_reasons_sandbox_api() -> Result<()> {
    cri_stop_container_grace_period_exit_codes_and_reasons_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-stop-sb",
    )
}

fn cri_stop_container_grace_period_exit_codes_and_reasons_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("stop")?;

    // Ignores SIGTERM (after saying so): killed when the grace period ends.
    let stubborn = w.start_container(
        &pod,
        &cfg,
        "stubborn",
        &[
            "sh",
            "-c",
            "trap 'echo got-sigterm' TERM; echo ready; while :; do sleep 0.2; done",
        ],
    )?;
    // Exits 0 on SIGTERM.
    let polite = w.start_container(
        &pod,
        &cfg,
        "polite",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.2; done",
        ],
    )?;
    // Exits on its own with 7.
    let quitter = w.start_container(&pod, &cfg, "quitter", &["sh", "-c", "sleep 1; exit 7"])?;
    for id in [&stubborn, &polite] {
        running(c, id)?;
    }
    let log = |name: &str| {
        std::fs::read_to_string(w.dir().join(format!("pods/stop/{name}.log"))).unwrap_or_default()
    };
    for name in ["stubborn", "polite"] {
        wait_until(
            &format!("{name} printing ready (its trap is set)"),
            Duration::from_secs(30),
            || log(name).contains("ready"),
        )?;
    }

    let start = Instant::now();
    let grace = i64::try_from(GRACE)?;
    c.stop_container(&stubborn, grace)?;
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_secs(GRACE) && took < Duration::from_secs(GRACE + 10),
        "StopContainer with a {GRACE} s grace period took {took:?}"
    );
    ensure_exited(
        &c.container_status(&stubborn)?,
        137,
        "Error",
        "after the grace period",
    )?;
    wait_until(
        "the SIGTERM trap's output in the log",
        Duration::from_secs(10),
        || log("stubborn").contains("got-sigterm"),
    )?;

    let start = Instant::now();
    c.stop_container(&polite, 30)?;
    let took = start.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "a container that exits on SIGTERM took {took:?} to stop (grace 30 s)"
    );
    ensure_exited(
        &c.container_status(&polite)?,
        0,
        "Completed",
        "after SIGTERM",
    )?;

    let s = wait_exited(c, &quitter, Duration::from_secs(30))?;
    ensure!(
        s.exit_code == 7 && s.reason == "Error" && s.finished_at > s.started_at && s.started_at > 0,
        "a container exiting on its own: exit {} reason {:?} started {} finished {}",
        s.exit_code,
        s.reason,
        s.started_at,
        s.finished_at
    );

    for id in [&stubborn, &polite, &quitter] {
        c.remove_container(id)?;
    }
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

/// StopPodSandbox with containers still running stops them and the VM; RemovePodSandbox
/// then removes the containers too and leaves nothing behind.
#[test]
fn cri_stop_pod_sandbox_with_running_containers() -> Result<()> {
    cri_stop_pod_sandbox_with_running_containers_on(ContainerdFlavour::System, "cri-stop-pod")
}

#[test]
fn cri_stop_pod_sandbox_with_running_containers_sandbox_api() -> Result<()> {
    cri_stop_pod_sandbox_with_running_containers_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-stop-pod-sb",
    )
}

fn cri_stop_pod_sandbox_with_running_containers_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("stoppod")?;
    let a = w.start_container(&pod, &cfg, "a", &["sleep", "1000000"])?;
    let b = w.start_container(&pod, &cfg, "b", &["sleep", "1000000"])?;
    ensure!(
        CriWorld::vmms(&pod).len() == 1,
        "expected one QEMU for pod {pod}"
    );
    let start = Instant::now();
    c.stop_pod_sandbox(&pod)?;
    eprintln!("StopPodSandbox took {:?}", start.elapsed());
    for id in [&a, &b] {
        let s = c.container_status(id)?;
        ensure!(
            s.state == ContainerState::ContainerExited as i32,
            "container {id} is {} after StopPodSandbox",
            state_name(&s)
        );
    }
    let took = wait_no_vmm(&pod)?;
    eprintln!("VM gone {took:?} after StopPodSandbox returned");
    wait_until(
        "virtiofsd of the pod exiting",
        Duration::from_secs(10),
        || CriWorld::processes("virtiofsd", &pod).is_empty(),
    )?;
    c.remove_pod_sandbox(&pod)?;
    for id in [&a, &b] {
        let gone = c.container_status(id);
        ensure!(
            gone.as_ref()
                .is_err_and(|e| e.code() == Some(tonic::Code::NotFound)),
            "container {id} after RemovePodSandbox: {gone:?}"
        );
    }
    // Stopping and removing again is fine (kubelet retries).
    let again = c.stop_pod_sandbox(&pod);
    ensure!(
        again.is_ok()
            || again
                .as_ref()
                .is_err_and(|e| e.code() == Some(tonic::Code::NotFound)),
        "StopPodSandbox of a removed pod: {again:?}"
    );
    c.remove_pod_sandbox(&pod)?;
    w.finish()?;
    Ok(())
}

/// `s` is EXITED with `code` and `reason`; `when` names the moment for the message.
fn ensure_exited(s: &ContainerStatus, code: i32, reason: &str, when: &str) -> Result<()> {
    ensure!(
        s.state == ContainerState::ContainerExited as i32
            && s.exit_code == code
            && s.reason == reason,
        "{when}: {} exit {} reason {:?} (expected EXITED, {code}, {reason})",
        state_name(s),
        s.exit_code,
        s.reason
    );
    Ok(())
}
