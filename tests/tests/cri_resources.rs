//! A container's CPU and memory limits hold in the guest, as runc applies them on a host:
//! the container's cgroup v2 files show them; exceeding the memory limit gets the container
//! OOM-killed and CRI reports `OOMKilled` with exit code 137, every time;
//! UpdateContainerResources changes the limits of a running container. On containerd 1.6
//! and 2.x.

mod cri_common;

use std::time::Duration;

use anyhow::{Result, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod, wait_exited};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::LinuxContainerResources;

const MIB: i64 = 1 << 20;
/// OOM kills checked in a row: Kata's reason is known to be lost some of the time.
const OOM_ROUNDS: usize = 3;

/// The container's own cgroup files, read from inside it (with or without a cgroup
/// namespace, /proc/self/cgroup names the directory).
const CGROUP_FILES: &str = "d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); \
    for f in memory.max cpu.max cpu.weight cpuset.cpus; do echo $f=$(cat $d/$f); done";

fn limits(memory: i64, quota: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: quota,
        cpu_shares: 512,
        memory_limit_in_bytes: memory,
        cpuset_cpus: "0".into(),
        ..Default::default()
    }
}

fn resources(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-resources", flavour)?;
    let c = w.client();
    let (pod, pod_cfg) = w.run_pod("resources")?;

    let mut cfg = specs::container_config("limited", &["sleep", "100000"]);
    if let Some(linux) = cfg.linux.as_mut() {
        linux.resources = Some(limits(96 * MIB, 50_000));
    }
    let limited = w.create_container(&pod, &cfg, &pod_cfg)?;
    c.start_container(&limited)?;
    let files = exec_ok(c, &limited, &["sh", "-c", CGROUP_FILES])?;
    for wanted in [
        format!("memory.max={}", 96 * MIB),
        "cpu.max=50000 100000".to_owned(),
        "cpuset.cpus=0".to_owned(),
    ] {
        ensure!(
            files.lines().any(|l| l.trim() == wanted),
            "the guest cgroup does not hold {wanted}: {files}"
        );
    }
    // 512 shares as a weight: 20 by runc's linear conversion, 59 by the one runc 1.3 and
    // crun use (libcgroups too); the default would be 100.
    ensure!(
        files
            .lines()
            .any(|l| l.trim() == "cpu.weight=20" || l.trim() == "cpu.weight=59"),
        "cpu shares 512 are not the guest cgroup's weight: {files}"
    );

    c.update_container_resources(&limited, limits(48 * MIB, 30_000))?;
    let files = exec_ok(c, &limited, &["sh", "-c", CGROUP_FILES])?;
    for wanted in [
        format!("memory.max={}", 48 * MIB),
        "cpu.max=30000 100000".into(),
    ] {
        ensure!(
            files.lines().any(|l| l.trim() == wanted),
            "after UpdateContainerResources the guest cgroup does not hold {wanted}: {files}"
        );
    }
    stop_and_remove_container(c, &limited, 0)?;

    for round in 0..OOM_ROUNDS {
        let name = format!("hog{round}");
        // dd fills a 64 MiB buffer as PID 1 of a container limited to 32 MiB.
        let mut cfg = specs::container_config(
            &name,
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        );
        if let Some(linux) = cfg.linux.as_mut() {
            linux.resources = Some(LinuxContainerResources {
                memory_limit_in_bytes: 32 * MIB,
                ..Default::default()
            });
        }
        let hog = w.create_container(&pod, &cfg, &pod_cfg)?;
        c.start_container(&hog)?;
        let status = wait_exited(c, &hog, Duration::from_secs(60))?;
        ensure!(
            status.reason == "OOMKilled" && status.exit_code == 137,
            "round {round}: the container over its memory limit ended with reason {:?}, exit \
             {} (message {:?})",
            status.reason,
            status.exit_code,
            status.message
        );
        c.remove_container(&hog)?;
    }

    stop_and_remove_pod(&w, &pod)?;
    pod_limit_holds(&w)?;
    w.finish()?;
    Ok(())
}

/// A pod limited to 48 MiB (its VM has that plus 128 MiB for the guest): a container
/// without a limit of its own that takes 64 MiB, which the VM has room for, is OOM-killed
/// by the pod's limit.
fn pod_limit_holds(w: &CriWorld) -> Result<()> {
    let c = w.client();
    let pod_cfg = specs::with_resources(w.pod_config("pod-limit")?, 100_000, 100_000, 48 * MIB);
    let pod = w.run_pod_with(&pod_cfg)?;
    let cfg = specs::container_config(
        "unlimited",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    let hog = w.create_container(&pod, &cfg, &pod_cfg)?;
    c.start_container(&hog)?;
    let status = wait_exited(c, &hog, Duration::from_secs(60))?;
    ensure!(
        status.reason == "OOMKilled" && status.exit_code == 137,
        "a container taking more than its pod's memory limit ended with reason {:?}, exit {}",
        status.reason,
        status.exit_code
    );
    c.remove_container(&hog)?;
    stop_and_remove_pod(w, &pod)
}

#[test]
fn resources_on_containerd_1_6() -> Result<()> {
    resources(ContainerdFlavour::System)
}

#[test]
fn resources_on_containerd_2() -> Result<()> {
    resources(ContainerdFlavour::V2)
}

#[test]
fn resources_on_containerd_2_sandbox_api() -> Result<()> {
    resources(ContainerdFlavour::V2SandboxApi)
}
