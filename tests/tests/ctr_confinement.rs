//! How a running pod's VMM is confined, read from /proc: what an attacker who takes over
//! the VMM process through a device-model bug is left with.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use husk_tests::procfs::snapshot;
use husk_tests::{Runtime, TestBed};

/// A `Key:\tvalue` line of `/proc/<pid>/status`.
fn status_field(pid: i32, key: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("/proc/{pid}/status has no {key}"))
}

#[test]
fn the_vmm_runs_under_a_syscall_filter() -> Result<()> {
    let bed = TestBed::start("confine", Runtime::Husk)?;
    let id = bed.id("idle");
    bed.run_detached(&id, &["sleep", "1000"])?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;
    let vmms: Vec<_> = snapshot()
        .into_iter()
        .filter(|p| {
            matches!(p.name().as_str(), "qemu-system-x86_64" | "husk-vmm")
                && p.mentions(&id)
                && !p.is_zombie()
        })
        .collect();
    ensure!(vmms.len() == 1, "expected one VMM for {id}: {vmms:?}");
    let vmm = &vmms[0];
    // QEMU's -sandbox and husk-vmm's own filter are both seccomp filters (mode 2) behind
    // no_new_privs.
    for (key, want) in [("Seccomp", "2"), ("NoNewPrivs", "1")] {
        let got = status_field(vmm.pid, key)?;
        ensure!(
            got == want,
            "{}: {key} is {got}, expected {want}",
            vmm.name()
        );
    }
    bed.stop_detached(&id)?;
    bed.finish()?;
    Ok(())
}
