//! `containerd-shim-husk-v2 check`: can this host run husk pods, with which VMM, and why.

use std::path::Path;

use anyhow::Result;
use husk_hypervisor::{HostProbe, KvmSupport, TCG_IS_NOT_A_BOUNDARY};

use crate::config::Config;

/// Prints a report; returns false when something required is missing.
pub fn run() -> Result<bool> {
    let (config, path) = match Config::resolve(None) {
        Ok(c) => c,
        Err(e) => {
            println!("config: ERROR {e}");
            return Ok(false);
        }
    };
    let mut ok = true;
    println!(
        "config: {}{}",
        path.display(),
        if path.exists() {
            ""
        } else {
            " (absent: built-in defaults)"
        }
    );
    let probe = HostProbe::default();
    match probe.kvm() {
        KvmSupport::Usable => println!("kvm: usable"),
        KvmSupport::Unusable(why) => println!("kvm: unusable ({why})"),
    }
    match husk_hypervisor::select_with(
        config.hypervisor.backend,
        &config.hypervisor.qemu_path,
        &config.hypervisor.vmm_path,
        config.hypervisor.software_emulation(),
        &probe,
    ) {
        Ok(s) => {
            println!("vmm: {} ({})", s.vmm.name(), s.reason);
            if s.emulated {
                println!("isolation: WARNING {TCG_IS_NOT_A_BOUNDARY}");
            }
        }
        Err(e) => {
            ok = false;
            println!("vmm: ERROR {e}");
        }
    }
    for (what, file) in [
        ("guest kernel", &config.hypervisor.kernel),
        ("guest initramfs", &config.hypervisor.initrd),
        ("virtiofsd", &config.virtiofs.virtiofsd_path),
    ] {
        ok &= report_file(what, file);
    }
    println!(
        "{}",
        if ok {
            "husk can run pods on this host"
        } else {
            "husk cannot run pods on this host: fix the errors above"
        }
    );
    Ok(ok)
}

fn report_file(what: &str, path: &Path) -> bool {
    if path.is_file() {
        println!("{what}: {}", path.display());
        true
    } else {
        println!(
            "{what}: ERROR {} is missing (install with `cargo xtask install` or fix the config)",
            path.display()
        );
        false
    }
}
