//! The built-in monitor next to QEMU/KVM under nested KVM (`husk_tests::nested::compare`):
//! this host has no usable KVM, so both run inside an outer QEMU/TCG VM with `-cpu max`.

use std::time::Duration;

use anyhow::{Context, Result};
use husk_tests::nested::compare;
use husk_tests::{Artifacts, TestScope};

use crate::ui::step;
use crate::workspace::Workspace;

/// Pods per backend.
const ROUNDS: usize = 5;
/// A cold build of the driver (the test crate and its dependencies) takes minutes.
const DRIVER_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DRIVER: &str = "nested_pod";

/// The Markdown section for BENCHMARKS.md.
pub fn section(ws: &Workspace, artifacts: &Artifacts) -> Result<String> {
    step("nested KVM: husk-vmm next to QEMU/KVM in one outer VM");
    ws.cargo()
        .args(["build", "-p", "husk-tests", "--bin", DRIVER])
        .timeout(DRIVER_BUILD_TIMEOUT)
        .run_inherit()
        .context("building the nested_pod driver")?;
    let driver = ws.target_dir.join("debug").join(DRIVER);
    let mut scope =
        TestScope::new("bench-nested").context("creating the nested bench directory")?;
    let run = compare::run(artifacts, scope.dir(), &driver, ROUNDS);
    scope.cleanup()?;
    let run = run?;
    Ok(format!(
        "## Built-in monitor vs QEMU under nested KVM\n\n{}\n\
         Method: one outer QEMU/TCG VM (`-cpu max`, 2 vCPUs, the outer kernel from \
         `kernel-config/outer`) with KVM inside; the `nested_pod` driver launches each pod \
         through the shim's backend selection and VM spec (1 vCPU, 256 MiB), alternating \
         backends, waits for the agent on the hybrid vsock and runs `echo` in a busybox \
         container through it. `boot_to_agent_ms`: launch until the agent answers its health \
         check; `guest_uptime_at_agent_ms`: the guest's own clock at that moment; \
         `vmm_rss_excl_guest_kib`: the monitor's RSS minus its guest-RAM mapping (from smaps); \
         `boot_timer_init_ms`: VM creation until the agent's marker, as husk-vmm's boot-timer \
         device logs it. Outer boot {:?}, whole outer run {:?}. Nested KVM on TCG is \
         slow: compare the columns, not the absolute numbers, with bare-metal figures.\n",
        run.table(),
        run.outer.boot.unwrap_or_default(),
        run.outer.elapsed
    ))
}
