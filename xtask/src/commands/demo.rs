//! `cargo xtask demo`: from a fresh machine to a container in a husk VM, printing what
//! happened and tearing everything down.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use husk_tests::{BusyboxImage, Cmd, Containerd, Ctr, HUSK_RUNTIME, LeakScope, TestScope};

use super::build;
use crate::ui::{note, step};
use crate::workspace::Workspace;

const NAMESPACE: &str = "husk-demo";
const CONTAINER_ID: &str = "demo";
/// A shim exits about 0.1 s after its last container is deleted.
const SHIM_EXIT_GRACE: Duration = Duration::from_secs(3);
/// First boot under TCG plus image unpacking, with room for a busy machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds, starts a private containerd, runs `uname -a` in a husk VM next to the host's.
pub fn run(ws: &Workspace) -> Result<()> {
    let artifacts = build::run(ws)?;
    let mut scope = TestScope::new("demo").context("creating the demo directory")?;
    let mut containerd = super::husk_containerd(&scope, &artifacts)?;
    let leftovers = LeakScope::new(scope.tag(), NAMESPACE, containerd.address(), 0);

    let result = demo(ws, &containerd);

    step("tearing down");
    // Read the log before its directory goes away.
    let log_tail = result.is_err().then(|| containerd.log_tail());
    // The shim exits just after `ctr` returns; give it that moment.
    let _ = leftovers.wait_clean(&[CONTAINER_ID.to_string()], SHIM_EXIT_GRACE);
    containerd.stop()?;
    let killed = leftovers.kill_attributed();
    if !killed.is_empty() {
        note(format!("killed {} leftover process(es):", killed.len()));
        for p in &killed {
            note(format!("  {p}"));
        }
    }
    scope.cleanup()?;
    // `ctr run` put the container under `/husk-demo/<id>`; husk removed `<id>`.
    for (dir, e) in husk_tests::namespace_cgroups::remove(NAMESPACE) {
        note(format!("cgroup {} is still in use: {e}", dir.display()));
    }
    if let Some(tail) = log_tail {
        note(format!("containerd log (end):\n{tail}"));
    }
    result
}

fn demo(ws: &Workspace, containerd: &Containerd) -> Result<()> {
    step("building (or reusing) the offline busybox image");
    let image = BusyboxImage::ensure(&ws.cache)?;
    let ctr = Ctr::new(containerd.address(), NAMESPACE, RUN_TIMEOUT);
    ctr.import(&image.archive, &image.reference)?;

    let args = [
        "run",
        "--rm",
        "--runtime",
        HUSK_RUNTIME,
        &image.reference,
        CONTAINER_ID,
        "uname",
        "-a",
    ];
    step(format!("ctr {}", args.join(" ")));
    let start = Instant::now();
    let out = ctr.run(args)?;
    let took = start.elapsed();
    let host = Cmd::new("uname").arg("-a").checked()?.stdout_text();
    if !out.status.success() {
        bail!(
            "the container failed ({}) after {took:.2?}:\n{}",
            out.status,
            out.stderr_text().trim_end()
        );
    }
    println!();
    println!("  host  : {}", host.trim());
    println!("  guest : {}", out.stdout_text().trim());
    println!("  time  : {took:.2?} for `ctr run --rm` (VM boot, container start, exit, teardown)");
    println!();
    Ok(())
}
