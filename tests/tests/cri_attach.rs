//! CRI Attach to a running container, without and with a tty (twice, as `kubectl attach`
//! may), and ReopenContainerLog (kubelet's log rotation) losing no line. On containerd 1.6
//! and 2.x.

mod cri_common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_common::{log_messages, stop_and_remove_container, stop_and_remove_pod, wait_until};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::exec_stream::ExecStream;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::{AttachRequest, ContainerConfig, PodSandboxConfig};

/// Bound on each streaming step.
const STREAM_BOUND: Duration = Duration::from_secs(60);

fn with_stdin(mut cfg: ContainerConfig, tty: bool) -> ContainerConfig {
    cfg.stdin = true;
    cfg.tty = tty;
    cfg
}

fn attach(w: &CriWorld, pod: &str, pod_cfg: &PodSandboxConfig) -> Result<()> {
    let c = w.client();
    let script = "echo ready; while read l; do echo got:$l; done";
    let cfg = with_stdin(
        specs::container_config("reader", &["sh", "-c", script]),
        false,
    );
    let reader = w.create_container(pod, &cfg, pod_cfg)?;
    c.start_container(&reader)?;
    for word in ["one", "two"] {
        let url = c.attach(&AttachRequest {
            container_id: reader.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })?;
        c.block_on(async {
            let mut s = ExecStream::connect(&url).await?;
            s.send_stdin(format!("{word}\n").as_bytes()).await?;
            s.wait_stdout(&format!("got:{word}"), STREAM_BOUND).await
        })
        .with_context(|| format!("attached without a tty, sending {word:?}"))?;
    }
    stop_and_remove_container(c, &reader, 0)?;

    let cfg = with_stdin(specs::container_config("shell", &["sh"]), true);
    let shell = w.create_container(pod, &cfg, pod_cfg)?;
    c.start_container(&shell)?;
    let url = c.attach(&AttachRequest {
        container_id: shell.clone(),
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    })?;
    c.block_on(async {
        let mut s = ExecStream::connect(&url).await?;
        s.send_stdin(b"tty -s && echo tty-$((40+2))\r").await?;
        s.wait_stdout("tty-42", STREAM_BOUND).await
    })
    .context("attached with a tty")?;
    stop_and_remove_container(c, &shell, 0)
}

/// Rotates the log as kubelet does (rename, then ReopenContainerLog) while the container
/// writes a numbered line every 50 ms: the old and new files together hold every line once.
fn reopen_log(w: &CriWorld, pod: &str, pod_cfg: &PodSandboxConfig) -> Result<()> {
    let c = w.client();
    let script = "i=0; while :; do i=$((i+1)); echo line$i; sleep 0.05; done";
    let ticker = w.start_container(pod, pod_cfg, "ticker", &["sh", "-c", script])?;
    let log = c.container_status(&ticker)?.log_path;
    let log = Path::new(&log);
    wait_until("20 lines in the log", STREAM_BOUND, || {
        log_messages(log).len() >= 20
    })?;
    let rotated = log.with_extension("log.1");
    std::fs::rename(log, &rotated)?;
    c.reopen_container_log(&ticker)?;
    wait_until("20 lines in the reopened log", STREAM_BOUND, || {
        log_messages(log).len() >= 20
    })?;
    stop_and_remove_container(c, &ticker, 0)?;
    let lines: Vec<String> = log_messages(&rotated)
        .into_iter()
        .chain(log_messages(log))
        .collect();
    let expected: Vec<String> = (1..=lines.len()).map(|i| format!("line{i}")).collect();
    ensure!(
        lines == expected,
        "lines lost, repeated or out of order across the reopen: {lines:?}"
    );
    Ok(())
}

fn attach_and_logs(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-attach", flavour)?;
    let (pod, pod_cfg) = w.run_pod("attach")?;
    attach(&w, &pod, &pod_cfg)?;
    reopen_log(&w, &pod, &pod_cfg)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn attach_and_log_reopen_on_containerd_1_6() -> Result<()> {
    attach_and_logs(ContainerdFlavour::System)
}

#[test]
fn attach_and_log_reopen_on_containerd_2() -> Result<()> {
    attach_and_logs(ContainerdFlavour::V2)
}

#[test]
fn attach_and_log_reopen_on_containerd_2_sandbox_api() -> Result<()> {
    attach_and_logs(ContainerdFlavour::V2SandboxApi)
}
