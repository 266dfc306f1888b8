//! The QEMU command line for a pod VM (pure: unit-tested without QEMU).
//!
//! `microvm` (no PCI, no ACPI, qboot instead of SeaBIOS) with a shared memfd memory backend
//! (vhost-user devices map guest RAM), no default devices, serial console on stdout,
//! direct PVH kernel boot, two vhost-user devices (the hybrid vsock and virtio-fs) and a
//! virtio-net device per pod interface, all virtio-mmio: QEMU announces them on the
//! kernel command line. Measured against q35 + bzImage under TCG (`cargo xtask bench`),
//! it reaches the agent about 0.3 s sooner: no SeaBIOS, no PCI enumeration, no
//! decompression.

use std::path::Path;

use crate::spec::{COMMON_KERNEL_PARAMS, VmSpec};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation. `tsc_khz` is passed to the guest: its own TSC calibration can hang
    /// under TCG.
    Tcg { tsc_khz: u64 },
}

/// The machine: acpi=off because the guest kernel has no ACPI; QEMU then lists the
/// virtio-mmio devices on the kernel command line, and qboot's MP table lists the CPUs.
pub const MACHINE: &str = "microvm,acpi=off";

/// QEMU's `-accel` value under TCG. The translated-code buffer is bounded: QEMU 7.2's default
/// lets each VM's grow to 1 GiB as the guest runs new code, which a guest decides; a booted
/// idle pod uses about 27 MiB of it (`cargo xtask bench`), and capping it at 16 MiB did not
/// slow the boot.
pub const TCG_ACCEL: &str = "tcg,tb-size=128";

/// TSC frequency to announce when the host's is unknown (only used under TCG).
pub const FALLBACK_TSC_KHZ: u64 = 2_400_000;
/// QEMU's emulated local APIC counts at 1 GHz (`APIC_BUS_CYCLE_NS` in 7.2, the default
/// `apic-bus-frequency` later): told so, husk's guest kernel skips calibrating its APIC
/// timer against the PIT, a quarter of a second of every boot under TCG (see
/// `kernel-config/patches/0001-lapic-timer-hz.patch`).
pub const TCG_APIC_BUS_HZ: u64 = 1_000_000_000;

/// QEMU's `-sandbox` setting, on top of the jail it runs in (see [`super::jail`]).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// husk's guest kernel parameters; `extra` (from the config) comes last so it can override.
pub fn kernel_cmdline(accel: Accel, extra: &str) -> String {
    // panic=-1 + reboot=t: a guest panic or the agent's reboot() triple-faults, and QEMU's
    // -no-reboot turns that into a clean exit. pci=off: microvm has no PCI bus; probing
    // for one costs 20 ms under TCG.
    let mut cmdline =
        format!("console=ttyS0 quiet panic=-1 reboot=t pci=off {COMMON_KERNEL_PARAMS}");
    if let Accel::Tcg { tsc_khz } = accel {
        cmdline.push_str(&format!(
            " tsc_early_khz={tsc_khz} lapic_timer_hz={TCG_APIC_BUS_HZ}"
        ));
    }
    if !extra.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    cmdline
}

/// The files QEMU opens, as it sees them (inside its jail).
pub struct QemuPaths<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub vhost_vsock: &'a Path,
    pub virtiofsd: &'a Path,
}

pub fn qemu_args(spec: &VmSpec, accel: Accel, paths: &QemuPaths<'_>) -> Vec<String> {
    let (vhost_vsock, virtiofsd) = (paths.vhost_vsock, paths.virtiofsd);
    let (accel_name, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg { .. } => (TCG_ACCEL, "max"),
    };
    let mem = spec.memory_mib;
    let mut a: Vec<String> = Vec::with_capacity(48);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &format!("husk-{},debug-threads=on", option_safe(&spec.name)),
    ]);
    push(&["-machine", &format!("{MACHINE},memory-backend=mem")]);
    push(&["-accel", accel_name]);
    push(&["-cpu", cpu]);
    // One CPU per socket: the guest finds CPUs in the firmware's MP table, which lists
    // only the first CPU of each socket.
    push(&[
        "-smp",
        &format!("{0},sockets={0},cores=1,threads=1", spec.vcpus),
    ]);
    push(&["-m", &format!("{mem}M")]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    push(&["-monitor", "none", "-serial", "stdio"]);
    // QEMU's own seccomp filter, in force before the guest runs: no obsolete syscalls, no
    // setuid/setgid, no fork/exec, no scheduler or resource changes.
    push(&["-sandbox", SANDBOX]);
    push(&["-kernel", &paths.kernel.display().to_string()]);
    push(&["-initrd", &paths.initrd.display().to_string()]);
    push(&["-append", &kernel_cmdline(accel, &spec.kernel_params)]);
    push(&[
        "-chardev",
        &format!("socket,id=vsock,path={}", vhost_vsock.display()),
    ]);
    // The guest CID is the vhost-user backend's to announce, not a device property.
    push(&["-device", "vhost-user-vsock-device,chardev=vsock"]);
    // Free page reporting: the guest hands back what it freed after boot (the initramfs
    // above all), and the host drops those pages. Measured on microvm under TCG (a bare
    // boot, 25 s idle): guest RAM resident 37.9 → 34.2 MiB, idle CPU 1.5 → 2.0 millicores.
    // (On q35, an earlier `cargo xtask bench` showed no gain and 19 vs 12 millicores.)
    push(&["-device", "virtio-balloon-device,free-page-reporting=on"]);
    push(&[
        "-chardev",
        &format!("socket,id=fs,path={}", virtiofsd.display()),
    ]);
    push(&[
        "-device",
        &format!(
            "vhost-user-fs-device,chardev=fs,tag={},queue-size=1024",
            spec.shared_fs.tag
        ),
    ]);
    // The pod's interfaces: taps inherited from fd 3 on (see `Supervised::spawn`).
    for (i, (net, fd)) in spec
        .net
        .iter()
        .zip(husk_vmm_config::FIRST_TAP_FD..)
        .enumerate()
    {
        push(&["-netdev", &format!("tap,id=net{i},fd={fd}")]);
        push(&[
            "-device",
            &format!("virtio-net-device,netdev=net{i},mac={}", net.mac_text()),
        ]);
    }
    a
}

/// QEMU option values are comma-separated: keep names to a harmless alphabet.
fn option_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{SharedFsSpec, VsockSpec};
    use std::path::PathBuf;

    fn spec() -> VmSpec {
        VmSpec {
            name: "pod1".into(),
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            kernel_params: " husk.log=debug ".into(),
            vcpus: 2,
            memory_mib: 512,
            run_dir: PathBuf::from("/run/husk/pod1"),
            vsock: VsockSpec {
                guest_cid: 3,
                uds_path: PathBuf::from("/run/husk/pod1/vsock.sock"),
            },
            shared_fs: SharedFsSpec {
                tag: "husk".into(),
                shared_dir: PathBuf::from("/run/husk/pod1/shared"),
                virtiofsd: PathBuf::from("/v"),
                cache: "auto".into(),
            },
            vmm_ids: crate::IdRange {
                first: 1_000_000,
                count: 16,
                lock_dir: PathBuf::from("/run/husk-vmm-ids"),
            },
            net: Vec::new(),
        }
    }

    fn paths() -> QemuPaths<'static> {
        QemuPaths {
            kernel: Path::new("/boot/kernel"),
            initrd: Path::new("/boot/initrd"),
            vhost_vsock: Path::new("/vv"),
            virtiofsd: Path::new("/fs"),
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_line_has_tsc_and_max_cpu() {
        let a = qemu_args(&spec(), Accel::Tcg { tsc_khz: 2_600_000 }, &paths());
        assert_eq!(value_of(&a, "-kernel"), ["/boot/kernel"]);
        assert_eq!(value_of(&a, "-initrd"), ["/boot/initrd"]);
        assert_eq!(value_of(&a, "-accel"), ["tcg,tb-size=128"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        let append = value_of(&a, "-append")[0];
        assert!(append.contains("tsc_early_khz=2600000"), "{append}");
        assert!(append.contains("lapic_timer_hz=1000000000"), "{append}");
        assert!(append.contains("pci=off"), "{append}");
        assert!(append.contains("virtio_mmio.queue_num_max=256"), "{append}");
        assert_eq!(
            value_of(&a, "-machine"),
            ["microvm,acpi=off,memory-backend=mem"]
        );
        assert!(append.ends_with("husk.log=debug"), "{append}");
        assert_eq!(value_of(&a, "-smp"), ["2,sockets=2,cores=1,threads=1"]);
        assert_eq!(value_of(&a, "-m"), ["512M"]);
        assert!(value_of(&a, "-object")[0].contains("size=512M,share=on"));
    }

    #[test]
    fn each_pod_interface_is_a_virtio_net_device_on_an_inherited_tap() {
        let mut s = spec();
        for (name, last) in [("eth0", 0x55), ("net1", 0x66)] {
            s.net.push(crate::NetSpec {
                name: name.into(),
                mac: [0x02, 0x11, 0x22, 0x33, 0x44, last],
                tap: std::sync::Arc::new(std::fs::File::open("/dev/null").unwrap().into()),
            });
        }
        let a = qemu_args(&s, Accel::Kvm, &paths());
        assert_eq!(
            value_of(&a, "-netdev"),
            ["tap,id=net0,fd=3", "tap,id=net1,fd=4"]
        );
        let devices = value_of(&a, "-device");
        for (i, mac) in ["02:11:22:33:44:55", "02:11:22:33:44:66"]
            .iter()
            .enumerate()
        {
            let want = format!("virtio-net-device,netdev=net{i},mac={mac}");
            assert!(devices.contains(&want.as_str()), "{devices:?}");
        }
        assert!(value_of(&qemu_args(&spec(), Accel::Kvm, &paths()), "-netdev").is_empty());
    }

    #[test]
    fn names_cannot_inject_options() {
        let mut s = spec();
        s.name = "a,b=c".into();
        let a = qemu_args(&s, Accel::Kvm, &paths());
        assert_eq!(value_of(&a, "-name"), ["husk-a_b_c,debug-threads=on"]);
    }

    #[test]
    fn kvm_line_uses_host_cpu_without_tsc_hint() {
        let a = qemu_args(&spec(), Accel::Kvm, &paths());
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        let append = value_of(&a, "-append")[0];
        assert!(!append.contains("tsc_early_khz") && !append.contains("lapic_timer_hz"));
    }

    #[test]
    fn wires_both_vhost_user_devices() {
        let a = qemu_args(&spec(), Accel::Kvm, &paths());
        let chardevs = value_of(&a, "-chardev");
        assert!(chardevs.contains(&"socket,id=vsock,path=/vv"));
        assert!(chardevs.contains(&"socket,id=fs,path=/fs"));
        let devices = value_of(&a, "-device");
        assert!(devices.contains(&"vhost-user-vsock-device,chardev=vsock"));
        assert!(
            devices
                .iter()
                .any(|d| d.contains("vhost-user-fs-device,chardev=fs,tag=husk"))
        );
    }

    #[test]
    fn guest_reports_freed_pages() {
        let a = qemu_args(&spec(), Accel::Kvm, &paths());
        assert!(value_of(&a, "-device").contains(&"virtio-balloon-device,free-page-reporting=on"));
    }
}
