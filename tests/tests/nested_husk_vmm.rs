//! The built-in microVM monitor (`husk-vmm`) end to end, on the nested-KVM test host
//! (`husk_tests::nested`): pods run a busybox container through the agent with QEMU/KVM (the
//! reference, which proves the harness) and with the built-in backend, alternating, in the
//! same nested host; every pod must return the container's output and every built-in boot
//! must be reported by the monitor's boot-timer device. The medians are printed
//! (`cargo xtask bench` writes the same table to BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use husk_tests::nested::compare;
use husk_tests::{Artifacts, LeakScope, TestScope};

/// The example binary, built next to this test by `cargo test`/`cargo nextest run`
/// (their default target selection builds examples).
const DRIVER: &str = "nested_pod";
/// Pods per backend.
const ROUNDS: usize = 3;

/// `target/<profile>/examples/nested_pod`, beside this test binary's `deps/`.
fn driver() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let path = profile_dir.join("examples").join(DRIVER);
    ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p husk-tests --examples` (cargo test and \
         cargo nextest run build it when run without target filters)",
        path.display()
    );
    Ok(path)
}

#[test]
fn husk_vmm_runs_a_pod_inside_the_nested_host() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let scope = TestScope::new("nested-vmm")?;
    let run = compare::run(&artifacts, scope.dir(), &driver()?, ROUNDS)?;
    eprintln!("{}", run.outer.stdout_text().trim_end());
    eprintln!(
        "outer boot {:?}, whole outer run {:?}",
        run.outer.boot, run.outer.elapsed
    );
    eprintln!("{}", run.table());
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}
