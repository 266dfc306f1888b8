//! How a running pod's host processes are confined, read from /proc: what an attacker who
//! takes over the VMM process through a device-model bug is left with, and where the pod's
//! CPU and memory are charged.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use husk_tests::procfs::{ProcInfo, snapshot};
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

/// The processes that parse guest input: the monitor (QEMU, or husk-vmm running the VM)
/// and, with QEMU, the vsock backend (`husk-vmm --vsock-backend`).
fn guest_facing(id: &str) -> Vec<ProcInfo> {
    snapshot()
        .into_iter()
        .filter(|p| {
            matches!(p.name().as_str(), "qemu-system-x86_64" | "husk-vmm")
                && p.mentions(id)
                && !p.is_zombie()
        })
        .collect()
}

fn list(dir: &Path) -> Result<BTreeSet<String>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("listing {dir:?}"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// What one guest-facing process is left with: no privilege, its own namespaces, and a
/// root that shows nothing of the host but what it needs. Returns its uid.
fn check_confined(p: &ProcInfo) -> Result<String> {
    let who = format!("{} ({})", p.cmdline(), p.pid);
    // QEMU's -sandbox and husk's own filters are both seccomp filters (mode 2) behind
    // no_new_privs.
    for (key, want) in [
        ("Seccomp", "2"),
        ("NoNewPrivs", "1"),
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("Groups", ""),
    ] {
        let got = status_field(p.pid, key)?;
        ensure!(got == want, "{who}: {key} is {got}, expected {want}");
    }
    // An unprivileged uid (and gid) of the pod's own, never root.
    for key in ["Uid", "Gid"] {
        let ids = status_field(p.pid, key)?;
        ensure!(
            ids.split_whitespace().all(|i| i != "0"),
            "{who}: {key} is {ids}"
        );
    }
    for ns in ["mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", p.pid))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(theirs != ours, "{who} shares the host's {ns} namespace");
    }
    let root = PathBuf::from(format!("/proc/{}/root", p.pid));
    let (theirs, host) = (std::fs::metadata(&root)?, std::fs::metadata("/")?);
    ensure!(
        (theirs.dev(), theirs.ino()) != (host.dev(), host.ino()),
        "{who}: its root is the host's /"
    );
    // At most: the system's program directories (QEMU), the linker cache, /boot, /dev,
    // /run. Never the host's state, homes, temporary files, /proc or /sys.
    let top = list(&root)?;
    let allowed = [
        "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "run", "sbin", "usr",
    ];
    ensure!(
        top.iter().all(|e| allowed.contains(&e.as_str())),
        "{who}: its root holds {top:?}"
    );
    if top.contains("etc") {
        let etc = list(&root.join("etc"))?;
        ensure!(
            etc == BTreeSet::from(["ld.so.cache".to_string()]),
            "{who}: /etc holds {etc:?}"
        );
    }
    if top.contains("dev") {
        let dev = list(&root.join("dev"))?;
        let nodes = ["null", "zero", "urandom", "random", "kvm"];
        ensure!(
            dev.iter().all(|d| nodes.contains(&d.as_str())),
            "{who}: /dev holds {dev:?}"
        );
    }
    // Its /run is its own socket directory: never the pod's shared directory or state.
    let run = list(&root.join("run"))?;
    ensure!(
        run.iter().all(|f| f.ends_with(".sock")),
        "{who}: /run holds {run:?}"
    );
    // No descriptor it was not given: nothing open on the host's filesystem.
    for entry in std::fs::read_dir(format!("/proc/{}/fd", p.pid))? {
        let entry = entry?;
        let target = std::fs::read_link(entry.path())?
            .to_string_lossy()
            .into_owned();
        let expected = ["pipe:", "socket:", "anon_inode:", "/memfd:", "/dev/"]
            .iter()
            .any(|prefix| target.starts_with(prefix));
        ensure!(expected, "{who}: fd {:?} -> {target}", entry.file_name());
    }
    status_field(p.pid, "Uid")
}

#[test]
fn every_guest_facing_process_is_jailed_unprivileged_and_filtered() -> Result<()> {
    let bed = TestBed::start("confine", Runtime::Husk)?;
    let id = bed.id("idle");
    bed.run_detached(&id, &["sleep", "1000"])?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;
    let procs = guest_facing(&id);
    let vmm = procs
        .iter()
        .filter(|p| !p.argv.iter().any(|a| a == "--vsock-backend"))
        .count();
    ensure!(vmm == 1, "expected one VMM for {id}: {procs:?}");
    let qemu = procs.iter().any(|p| p.name() == "qemu-system-x86_64");
    // QEMU's vsock device is a process of its own; husk-vmm serves vsock itself.
    ensure!(
        procs.len() == if qemu { 2 } else { 1 },
        "guest-facing processes of {id}: {procs:?}"
    );
    let mut uids = BTreeSet::new();
    for p in &procs {
        uids.insert(check_confined(p)?);
    }
    ensure!(
        uids.len() == procs.len(),
        "the VMM and the vsock backend share a uid: {uids:?}"
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
                && !p.argv.iter().any(|a| a == "--vsock-backend")
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
    if vmm.name() == "qemu-system-x86_64" {
        ensure!(
            helpers
                .iter()
                .any(|p| p.argv.iter().any(|a| a == "--vsock-backend")),
            "no vsock backend under the shim: {helpers:?}"
        );
    }
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
