//! What only a Sandbox API pod (containerd 2.x, `sandboxer = "shim"`) has: the pause process
//! the shim runs in the guest, and the pod files the shim writes. The rest of the CRI suite
//! runs in this mode too (`*_sandbox_api` tests).
//!
//! - The pause process is as confined as the pause image's: uid 65535, no capabilities,
//!   no_new_privs; a root container sharing its PID namespace cannot reach its root.
//! - `/etc/hosts` is writable, as under runc, but a container cannot grow the pod's files
//!   past their own small tmpfs (they live beside the pod's state on the host), and the
//!   pod keeps working.

mod cri_common;

use anyhow::{Result, ensure};
use cri_common::{exec_ok, running, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};

/// The pod files' tmpfs (`shim/src/sandbox/pod_files.rs`).
const POD_FILES_LIMIT: u64 = 1024 * 1024;

#[test]
fn pause_process_and_pod_files_hold_against_a_container() -> Result<()> {
    let w = CriWorld::start("cri-sbapi", ContainerdFlavour::V2SandboxApi)?;
    let c = w.client();
    let mut pod_cfg = w.pod_config("sbapi")?;
    let mut cfg = specs::container_config("a", &["sleep", "1000000"]);
    ensure!(
        specs::share_pod_pids(&mut pod_cfg, &mut cfg),
        "the configs have no namespace options"
    );
    let pod = w.run_pod_with(&pod_cfg)?;
    let a = w.create_container(&pod, &cfg, &pod_cfg)?;
    c.start_container(&a)?;
    running(c, &a)?;

    // PID 1 of the pod: the shim's pause process, confined.
    let status = exec_ok(c, &a, &["cat", "/proc/1/status", "/proc/1/cmdline"])?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        field("Uid:").split_whitespace().all(|u| u == "65535"),
        "the pause process runs as {:?}",
        field("Uid:")
    );
    for caps in ["CapPrm:", "CapEff:", "CapBnd:"] {
        ensure!(
            field(caps) == "0000000000000000",
            "the pause process has {caps} {}",
            field(caps)
        );
    }
    ensure!(
        field("NoNewPrivs:") == "1",
        "the pause process may gain privileges"
    );
    let reach = c.exec_sync(&a, &["ls", "/proc/1/root/"], 0)?;
    ensure!(
        reach.exit_code != 0,
        "a container reads the pause process's root: {:?}",
        String::from_utf8_lossy(&reach.stdout)
    );

    // /etc/hosts: writable, bounded, and the pod survives the attempt to fill it.
    let fill = c.exec_sync(
        &a,
        &["sh", "-c", "head -c 4000000 /dev/zero >> /etc/hosts"],
        0,
    )?;
    ensure!(fill.exit_code != 0, "4 MB went into the pod's /etc/hosts");
    let size: u64 = exec_ok(c, &a, &["sh", "-c", "wc -c < /etc/hosts"])?
        .trim()
        .parse()?;
    ensure!(size <= POD_FILES_LIMIT, "/etc/hosts grew to {size} bytes");
    let b = w.start_container(&pod, &pod_cfg, "b", &["sleep", "1000000"])?;
    running(c, &b)?;
    let seen: u64 = exec_ok(c, &b, &["sh", "-c", "wc -c < /etc/hosts"])?
        .trim()
        .parse()?;
    ensure!(
        seen == size,
        "the pod's containers see different /etc/hosts"
    );

    for id in [&a, &b] {
        stop_and_remove_container(c, id, 0)?;
    }
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}
