//! The built-in monitor next to QEMU/KVM under nested KVM (`husk_tests::nested::compare`):
//! this host has no usable KVM, so both run inside an outer QEMU/TCG VM with `-cpu max`.

use anyhow::{Context, Result};
use husk_tests::nested::{compare, network};
use husk_tests::{Artifacts, TestScope};

use crate::ui::step;
use crate::workspace::Workspace;

/// Pods per backend.
const ROUNDS: usize = 5;
const DRIVER: &str = "nested_pod";

/// The Markdown section for BENCHMARKS.md.
pub fn section(ws: &Workspace, artifacts: &Artifacts) -> Result<String> {
    step("nested KVM: husk-vmm next to QEMU/KVM in one outer VM");
    let driver = super::driver::build(ws, DRIVER)?;
    let mut scope =
        TestScope::new("bench-nested").context("creating the nested bench directory")?;
    let run = compare::run(artifacts, scope.dir(), &driver, ROUNDS, true);
    scope.cleanup()?;
    let run = run?;
    step("nested KVM: the pod network with husk-vmm and QEMU/KVM");
    let mut scope =
        TestScope::new("bench-nested-net").context("creating the nested bench directory")?;
    let net = network::bench(artifacts, scope.dir(), &driver);
    scope.cleanup()?;
    let net = net?;
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
         device logs it; `phase_*_ms`: the start phases the shim logs (`pod start phases`: \
         helpers, VMM spawn, firmware = VMM spawned to the guest clock's start, kernel = to \
         `/init`, init = to the agent serving, connect = until the host has its reply). The \
         IO rows come from each backend's last pod (`nested_pod --io`, as in the IO section \
         above). Outer boot {:?}, whole outer run {:?}. Nested KVM on TCG is \
         slow: compare the columns, not the absolute numbers, with bare-metal figures.\n\n\
         ### Pod network under nested KVM\n\n{}\n\
         Method: in one outer VM, the `nested_pod` driver (`--net bench`) sets up what CNI's \
         bridge plugin would (a bridge with the host's address; per pod a namespace with a \
         veth, an address and a default route) and boots two pods whose VMs take their \
         namespaces over through the shim's own code (tap + tc redirects, virtio-net; QEMU \
         without vhost-net). Sinks: busybox `nc -ll -e wc -c` (the byte count is written back \
         and must equal the payload); floor: a plain namespace on the same bridge running the \
         same sink. Throughput: 8 MiB pushed, 3 runs (from the host: a Rust client, connect \
         until the sink closes; pod → pod: `dd | nc` exec'd in the client pod, timed on the \
         host minus an exec of `true`). RTT: busybox `ping -c 20 -i 0.2`. Each backend runs in an outer boot of its own (up to two tries: the nested host sometimes loses a loaded guest); outer runs {:?} in all.\n",
        run.table(),
        run.outer.boot.unwrap_or_default(),
        run.outer.elapsed,
        net.table(),
        net.elapsed
    ))
}
