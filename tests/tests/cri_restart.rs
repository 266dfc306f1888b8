//! Restarting containerd while pods run loses nothing: the pod and its containers keep
//! running, containerd reconnects to the shim, exec, stop and remove work afterwards, and
//! what a container wrote while containerd was down is in its log. On containerd 1.6 and
//! 2.x.

mod cri_common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use cri_common::{
    exec_ok, log_messages as lines, running, stop_and_remove_container, stop_and_remove_pod,
    wait_until,
};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use k8s_cri::v1::PodSandboxState;

/// How long containerd stays down: the ticker writes about 20 lines meanwhile.
const DOWN_FOR: Duration = Duration::from_secs(2);
const BOUND: Duration = Duration::from_secs(60);

fn restart(flavour: ContainerdFlavour) -> Result<()> {
    let mut w = CriWorld::start("cri-restart", flavour)?;
    let (pod, cfg) = w.run_pod("restart")?;
    let script = "i=0; while :; do i=$((i+1)); echo line$i; sleep 0.1; done";
    let ticker = w.start_container(&pod, &cfg, "ticker", &["sh", "-c", script])?;
    let log = w.client().container_status(&ticker)?.log_path;
    let log = Path::new(&log).to_owned();
    wait_until("10 lines in the log", BOUND, || lines(&log).len() >= 10)?;

    let before = lines(&log).len();
    w.restart_containerd(DOWN_FOR)?;
    let c = w.client();
    let status = c.pod_sandbox_status(&pod, false)?.status;
    ensure!(
        status.is_some_and(|s| s.state == PodSandboxState::SandboxReady as i32),
        "the pod is not ready after containerd restarted"
    );
    running(c, &ticker)?;
    let said = exec_ok(c, &ticker, &["echo", "still-here"])?;
    ensure!(
        said.trim() == "still-here",
        "exec after the restart said {said:?}"
    );
    // What was written while containerd was down arrives, then more.
    wait_until("the log growing past the restart", BOUND, || {
        lines(&log).len() >= before + 40
    })?;
    stop_and_remove_container(c, &ticker, 0)?;
    let got = lines(&log);
    let expected: Vec<String> = (1..=got.len()).map(|i| format!("line{i}")).collect();
    ensure!(
        got == expected,
        "the log lost or repeated lines across the restart ({} lines; before the restart \
         {before}): {got:?}",
        got.len()
    );
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn containerd_restart_on_1_6() -> Result<()> {
    restart(ContainerdFlavour::System)
}

#[test]
fn containerd_restart_on_2() -> Result<()> {
    restart(ContainerdFlavour::V2)
}

#[test]
fn containerd_restart_on_2_sandbox_api() -> Result<()> {
    restart(ContainerdFlavour::V2SandboxApi)
}
