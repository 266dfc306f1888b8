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
            if s.vmm.name().starts_with("qemu") {
                ok &= report_qemu_machine(&config.hypervisor.qemu_path);
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

/// husk boots QEMU's `microvm` machine; some builds (RHEL's `qemu-kvm`) leave it out.
fn report_qemu_machine(qemu: &str) -> bool {
    let machine = husk_hypervisor::qemu::MACHINE;
    match machine_list(qemu) {
        Ok(list) if list.lines().any(|l| l.starts_with("microvm ")) => {
            println!("qemu machine: {machine}");
            true
        }
        Ok(_) => {
            println!(
                "qemu machine: ERROR {qemu} has no `microvm` machine (`{qemu} -machine help`); \
                 install an upstream QEMU build (≥ 5.0, e.g. Debian's qemu-system-x86) or set \
                 hypervisor.qemu_path to one"
            );
            false
        }
        Err(e) => {
            println!("qemu machine: ERROR running `{qemu} -machine help`: {e}");
            false
        }
    }
}

/// `qemu -machine help`, waited for at most 10 s.
fn machine_list(qemu: &str) -> Result<String> {
    use std::io::Read;
    let mut child = std::process::Command::new(qemu)
        .args(["-machine", "help"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("it did not answer within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    Ok(out)
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
