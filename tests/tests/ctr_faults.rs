//! Faults on the host side: a shim that dies must not leave its VM, helpers, mounts or
//! sockets behind; containerd's `delete` of the dead shim's task cleans the rest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use husk_tests::procfs::{ProcInfo, snapshot};
use husk_tests::{Runtime, TestBed};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Processes whose command line mentions `needle` and whose name is `name`.
fn processes(name: &str, needle: &str) -> Vec<ProcInfo> {
    snapshot()
        .into_iter()
        .filter(|p| p.name() == name && p.mentions(needle) && !p.is_zombie())
        .collect()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            bail!("{what} did not happen within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

#[test]
fn killed_shim_leaves_nothing_behind() -> Result<()> {
    let bed = TestBed::start("deadshim", Runtime::Husk)?;
    let id = bed.id("victim");
    bed.run_detached(&id, &["sleep", "1000"])
        .context("starting a detached container")?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;

    // The serving shim, not its socket guard (a child of the shim).
    let all = processes("containerd-shim-husk-v2", &id);
    let shims: Vec<&ProcInfo> = all
        .iter()
        .filter(|p| !all.iter().any(|q| q.pid == p.ppid))
        .collect();
    ensure!(
        shims.len() == 1,
        "expected one shim for {id}, found {:?}",
        all.iter().map(ProcInfo::cmdline).collect::<Vec<_>>()
    );
    let shim = shims[0];
    // The pod's VM and virtiofsd are named after the pod directory, which is named after
    // the container (its own pod).
    ensure!(
        !processes("qemu-system-x86_64", &id).is_empty(),
        "no QEMU found for {id}"
    );
    kill(Pid::from_raw(shim.pid), Signal::SIGKILL)?;

    // Parent-death signals take the VM and virtiofsd down with the shim.
    let took = wait_until(
        "QEMU and virtiofsd exiting after the shim died",
        Duration::from_secs(5),
        || {
            processes("qemu-system-x86_64", &id).is_empty()
                && processes("virtiofsd", &id).is_empty()
        },
    )?;
    eprintln!("VM and helpers gone {took:?} after the shim was killed");

    // containerd notices the dead shim and runs `delete` for the task; removing the task
    // and container must then work and leave nothing.
    let _ = bed.ctr().run(["task", "delete", "-f", &id])?;
    bed.ctr().checked(["container", "rm", &id])?;
    ensure!(!bed.ctr().tasks()?.contains(&id), "task {id} still listed");
    bed.finish()?;
    Ok(())
}

#[test]
fn killed_vmm_ends_the_pod_and_its_shim() -> Result<()> {
    let bed = TestBed::start("deadvmm", Runtime::Husk)?;
    let id = bed.id("vmmvictim");
    bed.run_detached(&id, &["sleep", "1000"])
        .context("starting a detached container")?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;
    let vmms = processes("qemu-system-x86_64", &id);
    ensure!(
        vmms.len() == 1,
        "expected one VMM for {id}, found {}",
        vmms.len()
    );
    kill(Pid::from_raw(vmms[0].pid), Signal::SIGKILL)?;

    // The container is reported exited and the shim (and its guard) are gone within 5 s.
    // "Exited" is STOPPED while the shim still answers, or no task at all once containerd
    // has cleaned up after the exited shim; either way no call may hang.
    wait_until(
        "the task no longer running",
        Duration::from_secs(5),
        || match bed.ctr().task_status(&id) {
            Ok(Some(status)) => status == "STOPPED",
            Ok(None) => true,
            Err(_) => false,
        },
    )?;
    let took = wait_until(
        "the shim exiting after its VMM died",
        Duration::from_secs(5),
        || {
            processes("containerd-shim-husk-v2", &id).is_empty()
                && processes("virtiofsd", &id).is_empty()
        },
    )?;
    eprintln!("shim gone {took:?} after the task was reported stopped");

    // containerd can still delete the task and the container.
    let _ = bed.ctr().run(["task", "delete", &id])?;
    bed.ctr().checked(["container", "rm", &id])?;
    bed.finish()?;
    Ok(())
}
