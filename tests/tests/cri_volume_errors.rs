//! Volumes that must not work, failing with an error that names the problem and leaving
//! nothing behind, on containerd 1.6 and 2.x:
//! - the subPath attack: a container replaces a directory of its writable volume, which
//!   another container of the pod is about to bind (a subPath, already resolved by
//!   containerd), with a symlink to a host directory; the bind must be refused, never
//!   follow the link to the host;
//! - a memory limit too small for the container to start.

mod cri_common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::{LinuxContainerResources, Mount};

const SECRET: &str = "a host file no pod may read";

fn mount(container_path: &str, host_path: &Path) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

fn errors(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-volume-errors", flavour)?;
    let c = w.client();
    let host_only = w.dir().join("host-only");
    std::fs::create_dir_all(&host_only)?;
    std::fs::write(host_only.join("secret"), SECRET)?;
    let volume = w.dir().join("empty-dir");
    std::fs::create_dir_all(volume.join("sub"))?;

    let (pod, cfg) = w.run_pod("volume-errors")?;
    let mut attacker = specs::container_config("attacker", &["sleep", "100000"]);
    attacker.mounts = vec![mount("/vol", &volume)];
    let attacker = w.create_container(&pod, &attacker, &cfg)?;
    c.start_container(&attacker)?;

    // The victim's subPath is resolved now, at CreateContainer; the guest swaps it after.
    let mut victim = specs::container_config("victim", &["sleep", "100000"]);
    victim.mounts = vec![mount("/sub", &volume.join("sub"))];
    let victim = w.create_container(&pod, &victim, &cfg)?;
    let plant = format!(
        "mv /vol/sub /vol/sub.old && ln -s {} /vol/sub",
        host_only.display()
    );
    exec_ok(c, &attacker, &["sh", "-c", &plant])?;
    ensure!(
        std::fs::symlink_metadata(volume.join("sub"))?
            .file_type()
            .is_symlink(),
        "the guest could not plant the link: the test would prove nothing"
    );
    let started = c.start_container(&victim);
    if started.is_ok() {
        let seen = exec_ok(c, &victim, &["sh", "-c", "cat /sub/secret"]).unwrap_or_default();
        anyhow::bail!("the bind through the planted link was made; the container reads {seen:?}");
    }
    let err = started.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        err.contains("symlink") && err.contains("sub"),
        "the refusal does not name the link: {err}"
    );
    c.remove_container(&victim)?;

    // A memory limit the container cannot even start in (64 KiB: in the guest, busybox
    // `sleep` and husk's small container init do start within 1 MiB).
    let mut tiny = specs::container_config("tiny", &["sleep", "100000"]);
    if let Some(linux) = tiny.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 10,
            ..Default::default()
        });
    }
    let tiny = w.create_container(&pod, &tiny, &cfg)?;
    let started = c.start_container(&tiny);
    let err = started
        .err()
        .map(|e| e.to_string())
        .context("a container limited to 64 KiB started")?;
    eprintln!("64 KiB container: {err}");
    ensure!(
        err.contains("memory limit"),
        "the error does not name the memory limit: {err}"
    );
    c.remove_container(&tiny)?;

    stop_and_remove_container(c, &attacker, 0)?;
    stop_and_remove_pod(&w, &pod)?;
    ensure!(std::fs::read_to_string(host_only.join("secret"))? == SECRET);
    w.finish()?;
    Ok(())
}

#[test]
fn volume_errors_on_containerd_1_6() -> Result<()> {
    errors(ContainerdFlavour::System)
}

#[test]
fn volume_errors_on_containerd_2() -> Result<()> {
    errors(ContainerdFlavour::V2)
}

#[test]
fn volume_errors_on_containerd_2_sandbox_api() -> Result<()> {
    errors(ContainerdFlavour::V2SandboxApi)
}
