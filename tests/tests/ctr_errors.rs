//! Bad input and broken environments: husk must fail within a bound, say what is wrong,
//! and leave nothing behind (the leak check of every test bed).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use husk_tests::faults::write_sleeper_initrd;
use husk_tests::{Artifacts, Backend, HuskConfig, Runtime, TestBed, TestScope};

/// The generated config with `change` applied.
fn config_with(change: impl FnOnce(&mut HuskConfig)) -> Result<HuskConfig> {
    let artifacts = Artifacts::from_env()?;
    let mut cfg = HuskConfig::load(&artifacts.config())?;
    change(&mut cfg);
    Ok(cfg)
}

fn run_with_config(
    name: &str,
    cfg: HuskConfig,
    not_before: Duration,
    within: Duration,
    needles: &[&str],
) -> Result<()> {
    let bed = TestBed::builder(name, Runtime::Husk)
        .husk_config(cfg)
        .start()
        .context("setting up the test bed")?;
    common::run_fails_naming(&bed, name, not_before, within, needles)?;
    bed.finish().context("leak check")?;
    Ok(())
}

#[test]
fn invalid_spec_is_rejected() -> Result<()> {
    common::run("bad-spec", Runtime::Husk, |bed| {
        common::invalid_spec_is_rejected(bed, Duration::from_secs(60))
    })
}

#[test]
fn missing_kernel_is_named() -> Result<()> {
    let missing = "/nonexistent/husk-test/vmlinuz-missing";
    let cfg = config_with(|c| c.hypervisor.kernel = missing.into())?;
    run_with_config(
        "no-kernel",
        cfg,
        Duration::ZERO,
        Duration::from_secs(30),
        &[missing],
    )
}

#[test]
fn missing_initrd_is_named() -> Result<()> {
    let missing = "/nonexistent/husk-test/initrd-missing.img";
    let cfg = config_with(|c| c.hypervisor.initrd = missing.into())?;
    run_with_config(
        "no-initrd",
        cfg,
        Duration::ZERO,
        Duration::from_secs(30),
        &[missing],
    )
}

#[test]
fn missing_hypervisor_is_named() -> Result<()> {
    let missing = "/nonexistent/qemu-system-x86_64";
    let cfg = config_with(|c| {
        // Force QEMU: with `auto` a KVM host would pick the built-in VMM.
        c.hypervisor.backend = Backend::Qemu;
        c.hypervisor.qemu_path = missing.into();
    })?;
    run_with_config(
        "no-qemu",
        cfg,
        Duration::ZERO,
        Duration::from_secs(30),
        &[missing],
    )
}

#[test]
fn silent_agent_times_out() -> Result<()> {
    // Not in the kernel cache under /root: QEMU runs as an unprivileged uid and must be able
    // to read the initramfs, as it can the installed /usr/share/husk.
    let fixture = TestScope::new("sleeper-initrd")?;
    let initrd = fixture.dir().join("sleeper-initrd.img");
    write_sleeper_initrd(&initrd)?;
    let cfg = config_with(|c| {
        c.hypervisor.initrd = initrd.clone();
        c.agent.connect_timeout_ms = 3000;
    })?;
    // The VM boots fine and only the agent is silent, so the shim must have waited out
    // the 3 s connect timeout — failing sooner means it failed for another reason. Upper
    // bound: boot (~2 s under TCG) + 3 s + teardown, with slack for a busy CI.
    run_with_config(
        "silent-agent",
        cfg,
        Duration::from_secs(3),
        Duration::from_secs(45),
        &["agent"],
    )
}

/// TCG is not a security boundary: without `hypervisor.allow_software_emulation` a host
/// whose KVM cannot run guests refuses pods at once, naming what is missing and the key.
/// Where KVM can run guests the key does not matter and the pod runs.
#[test]
fn software_emulation_needs_opt_in() -> Result<()> {
    let cfg = config_with(|c| c.hypervisor.allow_software_emulation = false)?;
    match husk_hypervisor::HostProbe::default().kvm() {
        husk_hypervisor::KvmSupport::Unusable(_) => run_with_config(
            "no-emulation",
            cfg,
            Duration::ZERO,
            Duration::from_secs(10),
            &[
                "no usable hardware virtualization",
                "hypervisor.allow_software_emulation",
            ],
        ),
        husk_hypervisor::KvmSupport::Usable => {
            let bed = TestBed::builder("no-emulation", Runtime::Husk)
                .husk_config(cfg)
                .start()?;
            common::uname_r_is_the_guest_kernel(&bed)?;
            bed.finish().context("leak check")?;
            Ok(())
        }
    }
}
