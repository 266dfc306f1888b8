//! The guest kernel boots an initramfs written by `husk-rootfs` under QEMU TCG, with the
//! command line husk uses — independent of the agent and the shim, so a failure here
//! points at the kernel config or the cpio writer.

use std::time::Duration;

use anyhow::{Result, ensure};
use husk_rootfs::{Entry, Initramfs};
use husk_tests::{Artifacts, Cmd, TestScope};

const MARKER: &str = "husk-guest-init-ran";

#[test]
fn kernel_boots_a_husk_rootfs_initramfs() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let kernel = artifacts.kernel();
    ensure!(
        kernel.is_file(),
        "{} is missing: run `cargo xtask build`",
        kernel.display()
    );
    let scope = TestScope::new("guest-boot")?;
    let initrd = scope.dir().join("initrd.img");
    // /init prints the marker and exits; the kernel then panics and, with panic=-1 and
    // QEMU's -no-reboot, QEMU exits.
    let init =
        format!("#!/bin/busybox sh\n[ -c /dev/console ] && /bin/busybox echo {MARKER} pid=$$\n");
    Initramfs::skeleton()
        .with(Entry::Directory {
            path: "/bin".into(),
            perm: 0o755,
        })
        .with(Entry::File {
            path: "/bin/busybox".into(),
            perm: 0o755,
            data: std::fs::read(husk_tests::image::BUSYBOX)?,
        })
        .with(Entry::File {
            path: "/init".into(),
            perm: 0o755,
            data: init.into_bytes(),
        })
        .write_file(&initrd)?;
    let out = Cmd::new("qemu-system-x86_64")
        .args(["-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256"])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet tsc_early_khz=2400000 reboot=t",
        ])
        .timeout(Duration::from_secs(120))
        .output()?;
    let console = out.stdout_text();
    ensure!(
        console.contains(&format!("{MARKER} pid=1")),
        "the guest's /init did not run as PID 1 with /dev/console (QEMU {}, {:?}):\n{console}\n{}",
        out.status,
        out.elapsed,
        out.stderr_text()
    );
    eprintln!("guest /init ran; QEMU exited after {:?}", out.elapsed);
    Ok(())
}
