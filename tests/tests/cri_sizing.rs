//! Pod VM sizing through CRI: containerd turns `LinuxPodSandboxConfig.resources` into the
//! `io.kubernetes.cri.sandbox-cpu-*` / `sandbox-memory` annotations, and husk sizes the
//! VM as limits + the configured overhead (vCPUs capped at the host's CPUs); a pod
//! without limits gets the configured defaults. The defaults and overheads are read from
//! `deploy/config.toml` (the test's husk config does not set them, so the shim's
//! built-in values, documented there, apply).

mod cri_common;

use anyhow::{Context, Result, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::config::repo_root;
use husk_tests::cri::{CriWorld, specs};

const MIB: i64 = 1024 * 1024;
/// The pod's limits: half a CPU (one vCPU after rounding up) and 192 MiB.
const QUOTA: i64 = 50_000;
const PERIOD: i64 = 100_000;
const MEMORY_MIB: i64 = 192;
/// What the guest kernel keeps for itself out of the VM's RAM (MemTotal is smaller than
/// `-m`): bounded generously, and the same for both VMs (checked by their difference).
const KERNEL_RESERVE_MIB: i64 = 48;
const SAME_KERNEL_SLACK_MIB: i64 = 4;

#[derive(Debug)]
struct Defaults {
    vcpus: i64,
    memory_mib: i64,
    overhead_vcpus: i64,
    overhead_memory_mib: i64,
}

fn defaults() -> Result<Defaults> {
    let path = repo_root().join("deploy/config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let t: toml::Table = text.parse().with_context(|| path.display().to_string())?;
    let get = |k: &str| {
        t.get("hypervisor")
            .and_then(|h| h.get(k))
            .and_then(toml::Value::as_integer)
            .with_context(|| format!("{} has no [hypervisor] {k}", path.display()))
    };
    Ok(Defaults {
        vcpus: get("vcpus")?,
        memory_mib: get("memory_mib")?,
        overhead_vcpus: get("overhead_vcpus")?,
        overhead_memory_mib: get("overhead_memory_mib")?,
    })
}

/// (`nproc`, MemTotal in MiB) inside the guest.
fn guest_size(w: &CriWorld, container: &str) -> Result<(i64, i64)> {
    let out = exec_ok(
        w.client(),
        container,
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
    )?;
    let mut lines = out.lines();
    let nproc: i64 = lines.next().unwrap_or_default().trim().parse()?;
    let kib: i64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no MemTotal")?
        .parse()?;
    Ok((nproc, kib / 1024))
}

/// QEMU's `-smp` and `-m` for the pod's VM.
fn qemu_size(pod: &str) -> Result<(String, String)> {
    let vmms = CriWorld::vmms(pod);
    ensure!(
        vmms.len() == 1,
        "expected one QEMU for {pod}, found {}",
        vmms.len()
    );
    let arg = |flag: &str| {
        vmms[0]
            .argv
            .iter()
            .position(|a| a == flag)
            .and_then(|i| vmms[0].argv.get(i + 1))
            .cloned()
            .with_context(|| format!("QEMU has no {flag}: {}", vmms[0].cmdline()))
    };
    Ok((arg("-smp")?, arg("-m")?))
}

fn leading_number(s: &str) -> Option<i64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn cri_pod_vm_is_sized_from_the_sandbox_annotations() -> Result<()> {
    sized(ContainerdFlavour::System, "cri-sizing")
}

/// With the Sandbox API the same limits come from CRI's pod config, not annotations.
#[test]
fn cri_pod_vm_is_sized_from_the_pod_config_sandbox_api() -> Result<()> {
    sized(ContainerdFlavour::V2SandboxApi, "cri-sizing-sb")
}

fn sized(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let d = defaults()?;
    let host_cpus = i64::try_from(std::thread::available_parallelism()?.get())?;
    let want_vcpus = (d.overhead_vcpus + (QUOTA + PERIOD - 1) / PERIOD).min(host_cpus);
    let want_mib = d.overhead_memory_mib + MEMORY_MIB;
    ensure!(
        want_vcpus != d.vcpus && want_mib != d.memory_mib,
        "the test's limits give the default size ({d:?}): it would prove nothing"
    );

    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let sized_cfg = specs::with_resources(w.pod_config("sized")?, QUOTA, PERIOD, MEMORY_MIB * MIB);
    let sized = w.run_pod_with(&sized_cfg)?;
    let (plain, plain_cfg) = w.run_pod("plain")?;
    let sized_app = w.start_container(&sized, &sized_cfg, "app", &["sleep", "1000000"])?;
    let plain_app = w.start_container(&plain, &plain_cfg, "app", &["sleep", "1000000"])?;

    let (smp, mem) = qemu_size(&sized)?;
    ensure!(
        leading_number(&smp) == Some(want_vcpus) && leading_number(&mem) == Some(want_mib),
        "sized pod: QEMU -smp {smp} -m {mem}, expected {want_vcpus} vCPUs and {want_mib} MiB"
    );
    let (smp, mem) = qemu_size(&plain)?;
    ensure!(
        leading_number(&smp) == Some(d.vcpus) && leading_number(&mem) == Some(d.memory_mib),
        "pod without limits: QEMU -smp {smp} -m {mem}, expected the defaults {d:?}"
    );

    let (sized_cpus, sized_mem) = guest_size(&w, &sized_app)?;
    let (plain_cpus, plain_mem) = guest_size(&w, &plain_app)?;
    eprintln!(
        "guest sizes: sized pod {sized_cpus} CPUs / {sized_mem} MiB, plain pod {plain_cpus} \
         CPUs / {plain_mem} MiB"
    );
    // Every mismatch at once (a wrong CPU count and a wrong memory size have different
    // causes).
    let mut wrong = Vec::new();
    if sized_cpus != want_vcpus {
        wrong.push(format!(
            "the sized pod's guest has {sized_cpus} CPUs (nproc), expected {want_vcpus} \
             (QEMU was given -smp {want_vcpus})"
        ));
    }
    if plain_cpus != d.vcpus {
        wrong.push(format!(
            "the plain pod's guest has {plain_cpus} CPUs, expected the default {}",
            d.vcpus
        ));
    }
    for (what, got, want) in [
        ("sized", sized_mem, want_mib),
        ("plain", plain_mem, d.memory_mib),
    ] {
        if got > want || got <= want - KERNEL_RESERVE_MIB {
            wrong.push(format!(
                "the {what} pod's guest MemTotal is {got} MiB, expected a little under {want} MiB"
            ));
        }
    }
    let diff = sized_mem - plain_mem;
    let want_diff = want_mib - d.memory_mib;
    if (diff - want_diff).abs() > SAME_KERNEL_SLACK_MIB {
        wrong.push(format!(
            "MemTotal differs by {diff} MiB between the pods, expected {want_diff} MiB"
        ));
    }
    let log = w.log_text();
    if !log.lines().any(|l| {
        l.contains("pod VM size")
            && l.contains(&sized)
            && l.contains(&format!("memory_mib: {want_mib}"))
            && l.contains("pod limits")
    }) {
        wrong.push("the shim did not log the sized pod's size from its limits".into());
    }
    ensure!(wrong.is_empty(), "pod VM sizing:\n  {}", wrong.join("\n  "));

    for (id, pod) in [(&sized_app, &sized), (&plain_app, &plain)] {
        stop_and_remove_container(c, id, 2)?;
        stop_and_remove_pod(&w, pod)?;
    }
    w.finish()?;
    Ok(())
}
