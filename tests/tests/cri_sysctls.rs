//! Pod sysctls through CRI (`LinuxPodSandboxConfig.sysctls`, kubelet's "safe" sysctls):
//! the pod's namespaced sysctls apply in the guest, in the namespaces its containers
//! share — the network one included (containerd 2.x adds
//! `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range` to every
//! sandbox by default, so a pod VM that cannot take `net.*` sysctls fails there).

mod cri_common;

use std::collections::HashMap;

use anyhow::{Result, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;

#[test]
fn cri_pod_sysctls_apply_in_the_guest() -> Result<()> {
    cri_pod_sysctls_apply_in_the_guest_on(ContainerdFlavour::System, "cri-sysctls")
}

#[test]
fn cri_pod_sysctls_apply_in_the_guest_sandbox_api() -> Result<()> {
    cri_pod_sysctls_apply_in_the_guest_on(ContainerdFlavour::V2SandboxApi, "cri-sysctls-sb")
}

fn cri_pod_sysctls_apply_in_the_guest_on(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let mut cfg = w.pod_config("sysctls")?;
    if let Some(linux) = cfg.linux.as_mut() {
        linux.sysctls = HashMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "80".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ]);
    }
    let pod = w.run_pod_with(&cfg)?;
    let app = w.start_container(&pod, &cfg, "app", &["sleep", "1000000"])?;
    let out = exec_ok(
        c,
        &app,
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced",
        ],
    )?;
    ensure!(
        out.split_whitespace().collect::<Vec<_>>() == ["80", "1"],
        "the pod's sysctls are not in effect in its container: {out:?}"
    );
    stop_and_remove_container(c, &app, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}
