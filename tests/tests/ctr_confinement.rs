//! How a running pod's host processes are confined, read from /proc: what an attacker who
//! takes over the VMM process through a device-model bug is left with, and where the pod's
//! CPU and memory are charged.

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
fn the_vmm_runs_unprivileged_behind_a_syscall_filter() -> Result<()> {
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
    for (key, want) in [
        ("Seccomp", "2"),
        ("NoNewPrivs", "1"),
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("Groups", ""),
    ] {
        let got = status_field(vmm.pid, key)?;
        ensure!(
            got == want,
            "{}: {key} is {got}, expected {want}",
            vmm.name()
        );
    }
    // An unprivileged uid (and gid) of the pod's own, never root.
    for key in ["Uid", "Gid"] {
        let ids = status_field(vmm.pid, key)?;
        ensure!(
            ids.split_whitespace().all(|i| i != "0"),
            "{}: {key} is {ids}",
            vmm.name()
        );
    }
    // The host's devices are out of sight: only the nodes a monitor needs.
    let dev: Vec<String> = std::fs::read_dir(format!("/proc/{}/root/dev", vmm.pid))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let allowed = ["null", "zero", "urandom", "random", "kvm"];
    ensure!(
        !dev.is_empty() && dev.iter().all(|d| allowed.contains(&d.as_str())),
        "{}: /dev holds {dev:?}",
        vmm.name()
    );
    bed.stop_detached(&id)?;
    bed.finish()?;
    Ok(())
}

/// The cgroup of `pid` in the hierarchy that holds memory: the `memory` controller's line on
/// cgroup v1, the unified line on v2.
fn memory_cgroup(pid: i32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let v1 = lines
        .iter()
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"));
    let v2 = lines.iter().find(|(controllers, _)| controllers.is_empty());
    v1.or(v2)
        .map(|(_, path)| path.to_string())
        .with_context(|| format!("no memory cgroup for {pid}: {text}"))
}

fn memory_cgroup_dir(path: &str) -> std::path::PathBuf {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let root = if v1.is_dir() {
        v1
    } else {
        std::path::Path::new("/sys/fs/cgroup")
    };
    root.join(path.trim_start_matches('/'))
}

#[test]
fn every_host_process_of_a_pod_lives_in_the_pod_cgroup() -> Result<()> {
    let bed = TestBed::start("pod-cgroup", Runtime::Husk)?;
    let id = bed.id("cg");
    bed.run_detached(&id, &["sleep", "1000"])?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;
    let procs = snapshot();
    let vmm = procs
        .iter()
        .find(|p| {
            matches!(p.name().as_str(), "qemu-system-x86_64" | "husk-vmm")
                && p.mentions(&id)
                && !p.is_zombie()
        })
        .context("no VMM for the pod")?;
    let shim = procs
        .iter()
        .find(|p| p.pid == vmm.ppid)
        .context("no parent of the VMM")?;
    // The shim's socket guard (forked before the pod exists, to outlive the shim) is the
    // shim's own, not the pod's.
    let helpers: Vec<_> = procs
        .iter()
        .filter(|p| p.ppid == shim.pid && p.pid != vmm.pid && !p.is_zombie())
        .filter(|p| p.comm != shim.comm)
        .collect();
    ensure!(
        helpers.iter().any(|p| p.name() == "virtiofsd"),
        "no virtiofsd under the shim: {helpers:?}"
    );
    let pod = memory_cgroup(vmm.pid)?;
    ensure!(pod.ends_with(&format!("/{id}")), "VMM cgroup {pod}");
    ensure!(
        pod != memory_cgroup(i32::try_from(std::process::id())?)?,
        "the pod cgroup is the test's own"
    );
    for p in helpers.iter().copied().chain([shim]) {
        let got = memory_cgroup(p.pid)?;
        ensure!(
            got == pod,
            "{} ({}) is in {got}, not {pod}",
            p.name(),
            p.pid
        );
    }
    let dir = memory_cgroup_dir(&pod);
    ensure!(dir.is_dir(), "{dir:?} missing while the pod runs");
    bed.stop_detached(&id)?;
    bed.finish()?;
    ensure!(!dir.exists(), "the pod cgroup {dir:?} outlived the pod");
    Ok(())
}
