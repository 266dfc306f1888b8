//! The kubelet path end to end: CRI calls to a private containerd (1.6 and 2.x) with
//! runtime handler `husk`. RunPodSandbox → CreateContainer ×2 → StartContainer ×2 →
//! ExecSync → ContainerStatus → ListContainers/ListPodSandbox → StopContainer →
//! RemoveContainer → StopPodSandbox → RemovePodSandbox; both containers in one VM sharing
//! its IPC and UTS namespaces; two pods in two VMs; nothing left behind.

mod cri_common;

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, ensure};
use cri_common::{
    exec_ok, running, shared_view, stop_and_remove_container, stop_and_remove_pod, wait_no_vmm,
};
use husk_tests::cri::{CriWorld, HANDLER};
use husk_tests::{Artifacts, ContainerdFlavour};
use k8s_cri::v1::{ContainerFilter, ContainerState, PodSandboxFilter, PodSandboxState};

fn lifecycle(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-lifecycle", flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("lifecycle")?;

    let status = c
        .pod_sandbox_status(&pod, false)?
        .status
        .context("PodSandboxStatus without status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "pod not ready after RunPodSandbox: {status:?}"
    );
    ensure!(
        status.runtime_handler == HANDLER,
        "pod runs with handler {:?}",
        status.runtime_handler
    );
    // CNI ran: the pod has an address from the test's network.
    let ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    ensure!(
        w.network().owns(&ip),
        "the pod's IP {ip:?} is not from the test's CNI network"
    );
    // The VM: one QEMU, booted with the kernel of the config CRI passed as ConfigPath
    // (containerd has no HUSK_CONFIG; the installed default would name another kernel).
    let vmms = CriWorld::vmms(&pod);
    ensure!(
        vmms.len() == 1,
        "expected one QEMU for pod {pod}, found {}",
        vmms.len()
    );
    // QEMU names the kernel by where its jail shows it; that file is the config's kernel
    // (its uncompressed vmlinux, which both monitors prefer).
    let kernel = husk_hypervisor::spec::preferred_kernel(&Artifacts::from_env()?.kernel());
    let booted = std::fs::metadata(format!("/proc/{}/root/boot/kernel", vmms[0].pid))?;
    let wanted = std::fs::metadata(&kernel)?;
    ensure!(
        (booted.dev(), booted.ino()) == (wanted.dev(), wanted.ino()),
        "the pod VM does not boot the kernel of ConfigPath {} ({}): {}",
        w.husk_config().display(),
        kernel.display(),
        vmms[0].cmdline()
    );
    let log = w.log_text();
    ensure!(
        log.lines().any(|l| l.contains("booting pod VM")
            && l.contains(&pod)
            && l.contains(&*w.husk_config().to_string_lossy())),
        "the shim did not log booting pod {pod} with config {}",
        w.husk_config().display()
    );

    // Two containers; the first creates a POSIX message queue (IPC namespace scoped).
    let first = w.start_container(
        &pod,
        &cfg,
        "first",
        &[
            "sh",
            "-c",
            "touch /dev/mqueue/husk-q && echo first-ready; exec sleep 1000000",
        ],
    )?;
    let second = w.start_container(&pod, &cfg, "second", &["sleep", "1000000"])?;
    for id in [&first, &second] {
        running(c, id)?;
    }

    let a = shared_view(c, &first)?;
    let b = shared_view(c, &second)?;
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    ensure!(
        a.boot_id != host_boot.trim(),
        "the container reports the host's boot id: not in a VM"
    );
    ensure!(
        a.boot_id == b.boot_id,
        "the two containers of one pod run in different kernels: {a:?} / {b:?}"
    );
    ensure!(
        a.hostname == "lifecycle" && b.hostname == "lifecycle",
        "hostnames are not the pod's: {a:?} / {b:?}"
    );
    ensure!(
        a.uts_ns == b.uts_ns,
        "UTS namespace not shared: {a:?} / {b:?}"
    );
    ensure!(
        a.ipc_ns == b.ipc_ns,
        "IPC namespace not shared: {a:?} / {b:?}"
    );
    ensure!(
        a.pid_ns != b.pid_ns,
        "containers share a PID namespace although the pod asked for one each: {a:?} / {b:?}"
    );
    ensure!(
        b.mqueues.contains(&"husk-q".to_owned()),
        "the second container does not see the first one's message queue: {a:?} / {b:?}"
    );

    let out = c.exec_sync(&first, &["sh", "-c", "echo out; echo err >&2; exit 3"], 0)?;
    ensure!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code) == (b"out\n", b"err\n", 3),
        "ExecSync: stdout {:?}, stderr {:?}, exit {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.exit_code
    );

    let listed = c.list_containers(Some(ContainerFilter {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    }))?;
    let mut ids: Vec<&str> = listed.iter().map(|x| x.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![first.as_str(), second.as_str()];
    want.sort_unstable();
    ensure!(
        ids == want,
        "ListContainers shows {ids:?}, expected {want:?}"
    );
    ensure!(
        listed
            .iter()
            .all(|x| x.state == ContainerState::ContainerRunning as i32),
        "ListContainers: not all running: {listed:?}"
    );
    let pods = c.list_pod_sandbox(Some(PodSandboxFilter {
        id: pod.clone(),
        ..Default::default()
    }))?;
    ensure!(
        pods.len() == 1 && pods[0].state == PodSandboxState::SandboxReady as i32,
        "ListPodSandbox: {pods:?}"
    );
    ensure!(
        CriWorld::vmms(&pod).len() == 1,
        "the pod has more than one VM after starting two containers"
    );

    for id in [&first, &second] {
        stop_and_remove_container(c, id, 2)?;
    }
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn cri_pod_lifecycle_containerd_1_6() -> Result<()> {
    lifecycle(ContainerdFlavour::System)
}

#[test]
fn cri_pod_lifecycle_containerd_2() -> Result<()> {
    lifecycle(ContainerdFlavour::V2)
}

#[test]
fn cri_pod_lifecycle_containerd_2_sandbox_api() -> Result<()> {
    lifecycle(ContainerdFlavour::V2SandboxApi)
}

/// Two pods get two VMs: two QEMUs, two guest kernels.
#[test]
fn cri_two_pods_get_two_vms() -> Result<()> {
    cri_two_pods_get_two_vms_on(ContainerdFlavour::System, "cri-two-pods")
}

#[test]
fn cri_two_pods_get_two_vms_sandbox_api() -> Result<()> {
    cri_two_pods_get_two_vms_on(ContainerdFlavour::V2SandboxApi, "cri-two-pods-sb")
}

fn cri_two_pods_get_two_vms_on(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (p1, cfg1) = w.run_pod("pod-one")?;
    let (p2, cfg2) = w.run_pod("pod-two")?;
    let c1 = w.start_container(&p1, &cfg1, "app", &["sleep", "1000000"])?;
    let c2 = w.start_container(&p2, &cfg2, "app", &["sleep", "1000000"])?;
    let (v1, v2) = (CriWorld::vmms(&p1), CriWorld::vmms(&p2));
    ensure!(
        v1.len() == 1 && v2.len() == 1 && v1[0].pid != v2[0].pid,
        "expected one QEMU per pod: {} for {p1}, {} for {p2}",
        v1.len(),
        v2.len()
    );
    let b1 = exec_ok(c, &c1, &["cat", "/proc/sys/kernel/random/boot_id"])?;
    let b2 = exec_ok(c, &c2, &["cat", "/proc/sys/kernel/random/boot_id"])?;
    ensure!(b1 != b2, "two pods share one guest kernel (boot id {b1})");
    let h2 = exec_ok(c, &c2, &["hostname"])?;
    ensure!(h2.trim() == "pod-two", "pod-two's hostname is {h2:?}");
    for (id, pod) in [(&c1, &p1), (&c2, &p2)] {
        stop_and_remove_container(c, id, 2)?;
        stop_and_remove_pod(&w, pod)?;
        wait_no_vmm(pod)?;
    }
    w.finish()?;
    Ok(())
}
