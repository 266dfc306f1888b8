//! Steps shared by the CRI tests (`cri_*.rs`).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use husk_tests::cri::{CriClient, CriWorld};
use k8s_cri::v1::{ContainerState, ContainerStatus, PodSandboxState};

/// How long a pod's VM may take to go away after StopPodSandbox.
pub const VM_GONE_WITHIN: Duration = Duration::from_secs(10);

/// Polls `done` every 50 ms until it is true or `within` passed; returns how long it took.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            bail!("{what} did not happen within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

/// The messages of a CRI log file (lines `<time> <stream> <tag> <message>`); none if the
/// file cannot be read (yet).
pub fn log_messages(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
        .collect()
}

/// ExecSync that must exit 0; returns stdout.
pub fn exec_ok(c: &CriClient, id: &str, cmd: &[&str]) -> Result<String> {
    let out = c.exec_sync(id, cmd, 0)?;
    ensure!(
        out.exit_code == 0,
        "ExecSync {cmd:?} in {id} exited {}: stdout {:?}, stderr {:?}",
        out.exit_code,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The container's state name, for messages.
pub fn state_name(s: &ContainerStatus) -> String {
    ContainerState::try_from(s.state)
        .map_or_else(|_| s.state.to_string(), |x| x.as_str_name().to_owned())
}

/// ContainerStatus says RUNNING.
pub fn running(c: &CriClient, id: &str) -> Result<ContainerStatus> {
    let s = c.container_status(id)?;
    ensure!(
        s.state == ContainerState::ContainerRunning as i32,
        "container {id} is {} (reason {:?}, exit {}), not running",
        state_name(&s),
        s.reason,
        s.exit_code
    );
    Ok(s)
}

/// Waits until ContainerStatus says EXITED; returns that status.
pub fn wait_exited(c: &CriClient, id: &str, within: Duration) -> Result<ContainerStatus> {
    let start = Instant::now();
    loop {
        let s = c.container_status(id)?;
        if s.state == ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        if start.elapsed() > within {
            bail!("container {id} still {} after {within:?}", state_name(&s));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a container sees of its VM and namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub boot_id: String,
    pub hostname: String,
    pub ipc_ns: String,
    pub uts_ns: String,
    pub pid_ns: String,
    pub mqueues: Vec<String>,
}

/// Reads [`View`] through ExecSync.
pub fn shared_view(c: &CriClient, id: &str) -> Result<View> {
    let out = exec_ok(
        c,
        id,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; hostname; readlink /proc/self/ns/ipc; \
             readlink /proc/self/ns/uts; readlink /proc/self/ns/pid; echo $(ls /dev/mqueue)",
        ],
    )?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 6, "unexpected view of {id}: {out:?}");
    Ok(View {
        boot_id: lines[0].trim().to_owned(),
        hostname: lines[1].trim().to_owned(),
        ipc_ns: lines[2].trim().to_owned(),
        uts_ns: lines[3].trim().to_owned(),
        pid_ns: lines[4].trim().to_owned(),
        mqueues: lines[5].split_whitespace().map(str::to_owned).collect(),
    })
}

/// StopContainer (grace `grace` s) → EXITED → RemoveContainer → gone.
pub fn stop_and_remove_container(c: &CriClient, id: &str, grace: i64) -> Result<()> {
    c.stop_container(id, grace)?;
    let s = c.container_status(id)?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32,
        "after StopContainer {id} is {}",
        state_name(&s)
    );
    c.remove_container(id)?;
    let gone = c.container_status(id);
    ensure!(
        gone.as_ref()
            .is_err_and(|e| e.code() == Some(tonic::Code::NotFound)),
        "ContainerStatus after RemoveContainer: {gone:?}"
    );
    Ok(())
}

/// Waits until no QEMU of sandbox `pod` runs.
pub fn wait_no_vmm(pod: &str) -> Result<Duration> {
    wait_until(
        &format!("the VM of pod {pod} exiting"),
        VM_GONE_WITHIN,
        || CriWorld::vmms(pod).is_empty(),
    )
}

/// StopPodSandbox → NOTREADY and the VM gone → RemovePodSandbox → gone.
pub fn stop_and_remove_pod(w: &CriWorld, pod: &str) -> Result<()> {
    let c = w.client();
    ensure!(
        !CriWorld::vmms(pod).is_empty(),
        "pod {pod} has no VM to stop: the check below would prove nothing"
    );
    c.stop_pod_sandbox(pod)?;
    let s = c
        .pod_sandbox_status(pod, false)?
        .status
        .context("PodSandboxStatus without status")?;
    ensure!(
        s.state == PodSandboxState::SandboxNotready as i32,
        "after StopPodSandbox the pod is {:?}",
        PodSandboxState::try_from(s.state)
    );
    wait_no_vmm(pod).context("StopPodSandbox must stop the pod's VM")?;
    c.remove_pod_sandbox(pod)?;
    let gone = c.pod_sandbox_status(pod, false);
    ensure!(
        gone.as_ref()
            .is_err_and(|e| e.code() == Some(tonic::Code::NotFound)),
        "PodSandboxStatus after RemovePodSandbox: {gone:?}"
    );
    Ok(())
}
