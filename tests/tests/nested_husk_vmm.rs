//! The built-in microVM monitor (`husk-vmm`) end to end, on the nested-KVM test host
//! (`husk_tests::nested`): pods run a busybox container through the agent with QEMU/KVM (the
//! reference, which proves the harness) and with the built-in backend, alternating, in the
//! same nested host; every pod must return the container's output and every built-in boot
//! must be reported by the monitor's boot-timer device. The medians are printed
//! (`cargo xtask bench` writes the same table to BENCHMARKS.md).
//!
//! A husk-vmm pod with a network (`husk_tests::nested::network`): the VM takes over a
//! namespace set up as CNI's bridge plugin would, busybox `httpd` in the pod answers HTTP
//! at the pod's address from the nested host, and nothing of husk's remains in the
//! namespace after the pod.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use husk_tests::nested::{compare, network};
use husk_tests::{Artifacts, LeakScope, TestScope};

/// The pod driver, built by cargo with this test.
const DRIVER: &str = env!("CARGO_BIN_EXE_nested_pod");
/// Pods per backend.
const ROUNDS: usize = 3;

#[test]
fn husk_vmm_runs_a_pod_inside_the_nested_host() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let scope = TestScope::new("nested-vmm")?;
    let run = compare::run(&artifacts, scope.dir(), Path::new(DRIVER), ROUNDS, false)?;
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

#[test]
fn husk_vmm_pod_answers_http_at_its_address() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let scope = TestScope::new("nested-net")?;
    let (result, outer) = network::http(&artifacts, scope.dir(), Path::new(DRIVER))?;
    eprintln!("{result}");
    eprintln!(
        "outer boot {:?}, whole outer run {:?}",
        outer.boot, outer.elapsed
    );
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}
