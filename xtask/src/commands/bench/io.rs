//! IO under QEMU/TCG: a container's stdout throughput to the `ctr` client, husk next to runc,
//! and the agent-level figures of `nested_pod --io` run on this host (agent RPC round trip,
//! stdout stream and virtio-fs throughput, the host's file throughput beside them).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use husk_tests::nested::compare::{IO_METRICS, value};
use husk_tests::{Artifacts, Cmd, HUSK_RUNTIME, RUNC_RUNTIME, TestScope};

use crate::workspace::Workspace;

/// What the stdout container writes.
const STDOUT_MIB: u64 = 64;
const RUNS: usize = 3;
const DRIVER: &str = "nested_pod";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// `(runtime label, MiB/s per run)` of `ctr run` stdout, husk and runc alternating.
pub fn ctr_stdout(
    address: &Path,
    image: &str,
    scope: &TestScope,
) -> Result<Vec<(String, Vec<f64>)>> {
    let mut husk = Vec::new();
    let mut runc = Vec::new();
    for i in 0..RUNS {
        husk.push(stdout_run(
            address,
            HUSK_RUNTIME,
            image,
            &scope.id(&format!("ioh{i}")),
        )?);
        runc.push(stdout_run(
            address,
            RUNC_RUNTIME,
            image,
            &scope.id(&format!("ior{i}")),
        )?);
    }
    Ok(vec![
        ("husk (QEMU/TCG)".into(), husk),
        ("runc".into(), runc),
    ])
}

/// One `ctr run --rm … dd`: MiB/s from the first byte on ctr's stdout to its end.
fn stdout_run(address: &Path, runtime: &str, image: &str, id: &str) -> Result<f64> {
    let dd = format!("dd if=/dev/zero bs=1048576 count={STDOUT_MIB} 2>/dev/null");
    let mut child = super::spawn_ctr_run(address, runtime, image, id, &["sh", "-c", &dd])?;
    let mut stdout = child.stdout.take().context("ctr stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = stdout.read(&mut buf)? as u64;
    let first = Instant::now();
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    let took = first.elapsed();
    let status = child.wait()?;
    if !status.success() || bytes != STDOUT_MIB << 20 {
        bail!("ctr run … dd with {runtime}: {status}, {bytes} bytes");
    }
    Ok(STDOUT_MIB as f64 / took.as_secs_f64().max(1e-6))
}

/// `nested_pod --io` with QEMU/TCG on this host, in a private mount namespace (its pod
/// directory's tmpfs goes with it): the `RESULT` line.
pub fn agent_level(ws: &Workspace, artifacts: &Artifacts, scope: &TestScope) -> Result<String> {
    let driver = super::driver::build(ws, DRIVER)?;
    let state = scope.dir().join("io-state");
    let out = Cmd::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&driver)
        .arg("--config")
        .arg(artifacts.config())
        .args(["--backend", "qemu", "--vmm"])
        .arg(artifacts.dir().join(husk_tests::nested::VMM_BINARY))
        .arg("--state-dir")
        .arg(&state)
        .args(["--id", "bench-io", "--io"])
        .timeout(DRIVER_TIMEOUT)
        .checked()
        .context("running nested_pod --io")?;
    let _ = std::fs::remove_dir_all(&state);
    out.stdout_text()
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .map(str::to_owned)
        .context("nested_pod printed no RESULT line")
}

/// The Markdown rows: stdout through ctr, then the agent-level figures.
pub fn table(ctr: &[(String, Vec<f64>)], agent: &str) -> String {
    let mut t = String::from("| what | median | range |\n|---|---|---|\n");
    for (who, runs) in ctr {
        let mut v = runs.clone();
        v.sort_by(f64::total_cmp);
        t.push_str(&format!(
            "| stdout to the `ctr` client, {who}, {STDOUT_MIB} MiB | {:.1} MiB/s | {:.1}–{:.1} |\n",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        ));
    }
    for key in IO_METRICS {
        let what = match key {
            "rpc_rtt_us" => "agent RPC round trip (Check, median of 200)",
            "stdout_mib_s" => "stdout stream, agent → host, 64 MiB",
            "fs_write_mib_s" => "virtio-fs rootfs: write 64 MiB + fsync (guest)",
            "fs_read_mib_s" => "virtio-fs rootfs: read 64 MiB the host wrote (guest)",
            "host_write_mib_s" => "same directory on the host: write + fsync",
            _ => "same directory on the host: read",
        };
        let unit = if key == "rpc_rtt_us" { "µs" } else { "MiB/s" };
        let range = if key == "rpc_rtt_us" {
            format!(
                "{}–{}",
                value(agent, "rpc_rtt_min_us").unwrap_or("?"),
                value(agent, "rpc_rtt_max_us").unwrap_or("?")
            )
        } else {
            "one run".into()
        };
        t.push_str(&format!(
            "| {what} | {} {unit} | {range} |\n",
            value(agent, key).unwrap_or("?")
        ));
    }
    t
}
