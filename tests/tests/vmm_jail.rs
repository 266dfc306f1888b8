//! husk-vmm as the shim starts it: jailed. What an attacker who takes over the monitor
//! through a device-model bug is left with, read from /proc while the monitor runs.
//!
//! These hosts' KVM (kvm_pvm) creates VMs but cannot boot a standard guest, so the monitor
//! builds its VM, filters itself and sits in `KVM_RUN`: long enough to inspect it. The
//! nested-KVM tests run the same jail with a guest that boots.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use husk_hypervisor::builtin::BuiltinVmm;
use husk_hypervisor::{IdRange, SharedFsSpec, VmHandle, VmSpec, Vmm, VsockSpec};
use husk_tests::{Artifacts, TestScope};
use husk_vmm::jail::MAX_OPEN_FILES;

/// The range and lock directory of the installed configuration, shared with every pod on
/// this host.
fn ids() -> IdRange {
    IdRange {
        first: 1_500_000_000,
        count: 65536,
        lock_dir: "/run/husk-vmm-ids".into(),
    }
}

fn spec(artifacts: &Artifacts, dir: &Path, name: &str) -> Result<VmSpec> {
    let run_dir = dir.join(name);
    let shared = run_dir.join("shared");
    std::fs::create_dir_all(&shared)?;
    Ok(VmSpec {
        name: name.into(),
        kernel: artifacts.vmlinux(),
        initrd: artifacts.initrd(),
        kernel_params: String::new(),
        vcpus: 1,
        memory_mib: 128,
        vsock: VsockSpec {
            guest_cid: 3,
            uds_path: run_dir.join("vm/vsock.sock"),
        },
        shared_fs: SharedFsSpec {
            tag: "husk".into(),
            shared_dir: shared,
            virtiofsd: artifacts.virtiofsd(),
            cache: "auto".into(),
        },
        run_dir,
        vmm_ids: ids(),
        net: Vec::new(),
    })
}

/// Waits until the monitor has built its VM: its vsock socket appears in the socket
/// directory, created from inside the jail.
async fn wait_running(vm: &dyn VmHandle, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(exit) = vm.exited().borrow().clone() {
            bail!("husk-vmm exited: {exit:?}: {}", vm.diagnostics());
        }
        ensure!(
            Instant::now() < deadline,
            "husk-vmm never created {socket:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn status(pid: u32, task: Option<&str>) -> Result<Vec<(String, String)>> {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

fn field<'a>(status: &'a [(String, String)], key: &str) -> Result<&'a str> {
    status
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("no {key} in status"))
}

/// Credentials, capabilities and filters of every thread; returns the uid.
fn check_credentials(pid: u32) -> Result<u32> {
    let main = status(pid, None)?;
    let uids: Vec<u32> = field(&main, "Uid")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let uid = uids[0];
    ensure!(uid != 0 && uids.iter().all(|&u| u == uid), "Uid: {uids:?}");
    let gids = field(&main, "Gid")?;
    ensure!(
        gids.split_whitespace().all(|g| g == uid.to_string()),
        "Gid: {gids}"
    );
    ensure!(
        field(&main, "Groups")?.is_empty(),
        "supplementary groups left"
    );
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        tasks.len() >= 2,
        "expected the main and a vCPU thread: {tasks:?}"
    );
    for task in &tasks {
        let s = status(pid, Some(task))?;
        let name = field(&s, "Name")?.to_string();
        for (key, want) in [
            ("CapInh", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
        ] {
            let got = field(&s, key)?;
            ensure!(
                got == want,
                "thread {name}: {key} is {got}, expected {want}"
            );
        }
    }
    Ok(uid)
}

/// The socket exists once the VM is built; the vCPU threads and the filters follow within
/// moments: the checks must hold once they are all in place.
async fn settled_credentials(pid: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check_credentials(pid) {
            Ok(uid) => return Ok(uid),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The root is the jail's: not the host's `/`, holding only what the monitor needs.
fn check_root(pid: u32) -> Result<()> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let jail = std::fs::metadata(&root)?;
    let host = std::fs::metadata("/")?;
    ensure!(
        (jail.dev(), jail.ino()) != (host.dev(), host.ino()),
        "husk-vmm's root is the host's /"
    );
    let list = |p: &Path| -> Result<BTreeSet<String>> {
        std::fs::read_dir(p)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let top = list(&root)?;
    ensure!(
        top == BTreeSet::from(["boot".into(), "dev".into(), "run".into()]),
        "jail root: {top:?}"
    );
    let dev = list(&root.join("dev"))?;
    ensure!(dev == BTreeSet::from(["kvm".into()]), "jail /dev: {dev:?}");
    for ns in ["mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(theirs != ours, "husk-vmm shares the host's {ns} namespace");
    }
    Ok(())
}

/// Only descriptors of the VM itself: no inherited file, nothing on the host's filesystem.
fn check_fds(pid: u32, canary: &Path) -> Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let target = std::fs::read_link(entry.path())?;
        let text = target.to_string_lossy();
        let expected = [
            "pipe:",
            "socket:",
            "anon_inode:",
            "/dev/null",
            "/dev/kvm",
            "/memfd:",
        ]
        .iter()
        .any(|p| text.starts_with(p));
        ensure!(
            expected && target != canary,
            "husk-vmm holds fd {:?} -> {text}",
            entry.file_name()
        );
    }
    Ok(())
}

fn check_limits(pid: u32, vcpus: u64) -> Result<()> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    for (name, want) in [
        ("Max open files", MAX_OPEN_FILES),
        ("Max processes", vcpus + 4),
        ("Max core file size", 0),
        ("Max locked memory", 0),
    ] {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in limits"))?;
        let soft = line[name.len()..].split_whitespace().next().unwrap_or("");
        ensure!(soft == want.to_string(), "{name}: {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_started_husk_vmm_is_jailed_with_an_id_of_its_own() -> Result<()> {
    let artifacts = Artifacts::from_env()?;
    let scope = TestScope::new("vmm-jail")?;
    // A descriptor the shim leaks by mistake (no O_CLOEXEC): the monitor must close it.
    let canary = scope.dir().join("canary");
    std::fs::write(&canary, "host secret")?;
    let path = std::ffi::CString::new(canary.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; the returned descriptor is closed below.
    let leaked = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    ensure!(leaked >= 0, "opening the canary");
    let vmm = BuiltinVmm::new(&artifacts.dir().join("husk-vmm").to_string_lossy())?;
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let mut vms = Vec::new();
    let mut uids = Vec::new();
    for name in ["pod-a", "pod-b"] {
        let spec = spec(&artifacts, scope.dir(), name)?;
        let vm = vmm.launch(&spec, &log).await?;
        wait_running(vm.as_ref(), &spec.vsock.uds_path).await?;
        let pid = vm.pid();
        uids.push(settled_credentials(pid).await?);
        check_root(pid)?;
        check_fds(pid, &canary)?;
        check_limits(pid, 1)?;
        vms.push((spec, vm));
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(leaked) };
    ensure!(uids[0] != uids[1], "two pods share monitor uid {}", uids[0]);
    for (spec, vm) in vms {
        let pid = vm.pid();
        vm.stop(Duration::from_secs(1)).await;
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "husk-vmm {pid} outlived stop"
        );
        for left in ["vm", "vmm-root", "husk-vmm.json"] {
            ensure!(
                !spec.run_dir.join(left).exists(),
                "{left} left behind in {:?}",
                spec.run_dir
            );
        }
    }
    for uid in uids {
        let claim = ids().lock_dir.join(uid.to_string());
        ensure!(!claim.exists(), "id claim {claim:?} left behind");
    }
    Ok(())
}
