//! Exec through CRI: ExecSync returns stdout, stderr and the exit code; ExecSync with a
//! timeout kills the process and returns; a streaming Exec (containerd's stream server,
//! WebSocket channel protocol) with a tty works and resizes reach the guest tty.

mod cri_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, ExecStream};
use k8s_cri::v1::ExecRequest;

/// How long a whole streaming session may take.
const STREAM_BOUND: Duration = Duration::from_secs(60);

#[test]
fn cri_exec_sync_output_exit_code_and_timeout() -> Result<()> {
    cri_exec_sync_output_exit_code_and_timeout_on(ContainerdFlavour::System, "cri-exec-sync")
}

#[test]
fn cri_exec_sync_output_exit_code_and_timeout_sandbox_api() -> Result<()> {
    cri_exec_sync_output_exit_code_and_timeout_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-exec-sync-sb",
    )
}

fn cri_exec_sync_output_exit_code_and_timeout_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("execsync")?;
    let id = w.start_container(&pod, &cfg, "app", &["sleep", "1000000"])?;

    let out = c.exec_sync(
        &id,
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 42"],
        0,
    )?;
    ensure!(
        out.stdout == b"to-out\n" && out.stderr == b"to-err\n" && out.exit_code == 42,
        "ExecSync: stdout {:?}, stderr {:?}, exit {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.exit_code
    );
    // A larger output arrives whole.
    let out = c.exec_sync(
        &id,
        &["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"],
        0,
    )?;
    ensure!(
        out.exit_code == 0
            && out.stdout.len() == 1_000_000
            && out.stdout.iter().all(|b| *b == b'x'),
        "1 MB of ExecSync output: exit {}, {} bytes",
        out.exit_code,
        out.stdout.len()
    );

    // Timeout: the call returns after about 2 s and the process is gone.
    let start = Instant::now();
    let res = c.exec_sync(&id, &["sh", "-c", "echo started; exec sleep 7777"], 2);
    let took = start.elapsed();
    eprintln!("ExecSync with timeout 2 s returned after {took:?}: {res:?}");
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "ExecSync with a 2 s timeout returned after {took:?}: {res:?}"
    );
    if let Ok(r) = &res {
        ensure!(
            r.exit_code != 0,
            "a timed-out ExecSync reported success: {r:?}"
        );
    }
    let ps = exec_ok(c, &id, &["ps", "-o", "args"])?;
    ensure!(
        !ps.contains("sleep 7777"),
        "the timed-out exec process still runs:\n{ps}"
    );

    stop_and_remove_container(c, &id, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

/// The script of the tty session: waits until the tty has the first size, reports it,
/// waits for a line on stdin, then waits for the second size.
const TTY_SCRIPT: &str = "wait_size() { i=0; while [ $i -lt 100 ]; do s=$(stty size); \
    [ \"$s\" = \"$1\" ] && break; i=$((i+1)); sleep 0.1; done; echo \"$2=$s\"; }; \
    tty; wait_size '33 101' first; read line; wait_size '50 132' second; exit 3";

#[test]
fn cri_streaming_exec_with_tty_and_resize() -> Result<()> {
    cri_streaming_exec_with_tty_and_resize_on(ContainerdFlavour::System, "cri-exec-tty")
}

#[test]
fn cri_streaming_exec_with_tty_and_resize_sandbox_api() -> Result<()> {
    cri_streaming_exec_with_tty_and_resize_on(ContainerdFlavour::V2SandboxApi, "cri-exec-tty-sb")
}

fn cri_streaming_exec_with_tty_and_resize_on(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("exectty")?;
    let id = w.start_container(&pod, &cfg, "app", &["sleep", "1000000"])?;

    // Without a tty: separate stdout and stderr, and the exit code in the status.
    let url = c.exec(&ExecRequest {
        container_id: id.clone(),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "echo o; echo e >&2; exit 5".into(),
        ],
        stdout: true,
        stderr: true,
        ..Default::default()
    })?;
    let outcome = c.block_on(async {
        let s = ExecStream::connect(&url).await?;
        s.finish(STREAM_BOUND).await
    })?;
    ensure!(
        outcome.stdout == b"o\n" && outcome.stderr == b"e\n" && outcome.exit_code == 5,
        "streaming exec: stdout {:?}, stderr {:?}, exit {} ({})",
        String::from_utf8_lossy(&outcome.stdout),
        String::from_utf8_lossy(&outcome.stderr),
        outcome.exit_code,
        outcome.status
    );

    // With a tty: the initial size (sent as kubectl does, right after connecting) and a
    // later resize both reach the guest's terminal.
    let url = c.exec(&ExecRequest {
        container_id: id.clone(),
        cmd: vec!["sh".into(), "-c".into(), TTY_SCRIPT.into()],
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
    })?;
    let outcome = c.block_on(async {
        let mut s = ExecStream::connect(&url).await?;
        s.resize(101, 33).await?;
        s.wait_stdout("first=", STREAM_BOUND).await?;
        s.resize(132, 50).await?;
        s.send_stdin(b"go\r").await?;
        s.finish(STREAM_BOUND).await
    })?;
    let text = String::from_utf8_lossy(&outcome.stdout);
    ensure!(
        text.contains("/dev/pts/"),
        "the exec has no terminal: {text:?}"
    );
    ensure!(
        text.contains("first=33 101"),
        "the first resize (33x101) did not reach the guest tty: {text:?}"
    );
    ensure!(
        text.contains("second=50 132"),
        "the second resize (50x132) did not reach the guest tty: {text:?}"
    );
    ensure!(
        outcome.exit_code == 3,
        "tty exec exit code {} ({}), expected 3",
        outcome.exit_code,
        outcome.status
    );

    stop_and_remove_container(c, &id, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}
