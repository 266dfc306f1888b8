//! Picks the VMM backend for this host and says why.

use crate::builtin::{BuiltinVmm, VMM_BINARY};
use crate::probe::{HostProbe, KvmSupport};
use crate::qemu::{Accel, FALLBACK_TSC_KHZ, QemuVmm};
use crate::vmm::{Vmm, VmmError};

/// The `hypervisor.backend` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The best backend this host can run.
    Auto,
    /// QEMU, with KVM when usable, else TCG.
    Qemu,
    /// husk's own microVM monitor (`husk-vmm`); needs KVM that can run standard guests.
    Builtin,
}

/// Whether pods may run under software emulation (QEMU TCG) where KVM cannot run guests:
/// the `hypervisor.allow_software_emulation` setting. QEMU's own security documentation
/// says TCG is not a security boundary, so it is an explicit opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftwareEmulation {
    Allowed,
    Refused,
}

/// The configuration key that allows software emulation, named in errors.
pub const ALLOW_EMULATION_KEY: &str = "hypervisor.allow_software_emulation";

/// What `check` and the pod log say whenever a pod runs under TCG.
pub const TCG_IS_NOT_A_BOUNDARY: &str = "QEMU's TCG software emulation is not a security boundary (QEMU's own security documentation): a guest that exploits the emulator runs code as the QEMU process on the host";

/// The chosen backend and a sentence explaining the choice (logged, and shown by `check`).
pub struct Selection {
    pub vmm: Box<dyn Vmm>,
    pub reason: String,
    /// The pod runs under software emulation: no hardware-virtualization boundary.
    pub emulated: bool,
}

pub fn select(
    choice: BackendChoice,
    qemu_path: &str,
    emulation: SoftwareEmulation,
    probe: &HostProbe,
) -> Result<Selection, VmmError> {
    select_with(choice, qemu_path, VMM_BINARY, emulation, probe)
}

/// [`select`] with an explicit `husk-vmm` path (a name is looked up beside the running
/// executable, then on `PATH`).
pub fn select_with(
    choice: BackendChoice,
    qemu_path: &str,
    vmm_path: &str,
    emulation: SoftwareEmulation,
    probe: &HostProbe,
) -> Result<Selection, VmmError> {
    let kvm = probe.kvm();
    match (choice, &kvm) {
        (BackendChoice::Builtin, KvmSupport::Unusable(why)) => {
            return Err(VmmError::NoBackend(format!(
                "backend=builtin needs KVM that can run standard guests, and this host has none ({why}); set hypervisor.backend = \"auto\" or \"qemu\" to use QEMU with software emulation"
            )));
        }
        (BackendChoice::Builtin, KvmSupport::Usable) => {
            return Ok(Selection {
                vmm: Box::new(BuiltinVmm::new(vmm_path)?),
                reason: "backend=builtin: husk's microVM monitor on KVM".into(),
                emulated: false,
            });
        }
        // husk-vmm is also the jail QEMU runs in: without it there is no backend at all.
        (BackendChoice::Auto, KvmSupport::Usable) => {
            return Ok(Selection {
                vmm: Box::new(BuiltinVmm::new(vmm_path)?),
                reason: "backend=auto: KVM can run standard guests here: husk's microVM monitor (husk-vmm)".into(),
                emulated: false,
            });
        }
        _ => {}
    }
    let (accel, reason) = match kvm {
        KvmSupport::Usable => (
            Accel::Kvm,
            "KVM can run standard guests here: QEMU with KVM".to_string(),
        ),
        KvmSupport::Unusable(why) if emulation == SoftwareEmulation::Refused => {
            return Err(VmmError::NoBackend(format!(
                "this host has no usable hardware virtualization ({why}), and {TCG_IS_NOT_A_BOUNDARY}; husk refuses to run pods without a hardware-virtualization boundary. Run husk pods on hosts with KVM that can run standard guests, or set {ALLOW_EMULATION_KEY} = true to accept software emulation"
            )));
        }
        KvmSupport::Unusable(why) => (
            Accel::Tcg {
                tsc_khz: probe.tsc_khz().unwrap_or(FALLBACK_TSC_KHZ),
            },
            format!(
                "no usable hardware virtualization ({why}): QEMU with TCG software emulation ({ALLOW_EMULATION_KEY} = true), expect slow pods; {TCG_IS_NOT_A_BOUNDARY}"
            ),
        ),
    };
    let reason = match choice {
        BackendChoice::Auto => format!("backend=auto: {reason}"),
        BackendChoice::Qemu | BackendChoice::Builtin => format!("backend=qemu: {reason}"),
    };
    Ok(Selection {
        emulated: matches!(accel, Accel::Tcg { .. }),
        vmm: Box::new(QemuVmm::new(qemu_path, vmm_path, accel)?),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn falls_back_to_tcg_with_reason() {
        let d = tempfile::tempdir().unwrap();
        let probe = unusable_probe(d.path());
        let s = select_with(
            BackendChoice::Auto,
            "sh",
            "sh",
            SoftwareEmulation::Allowed,
            &probe,
        )
        .unwrap();
        assert_eq!(s.vmm.name(), "qemu-tcg");
        assert!(s.emulated);
        assert!(s.reason.contains("not a security boundary"), "{}", s.reason);
        assert!(
            s.reason.contains("no usable hardware virtualization"),
            "{}",
            s.reason
        );
    }

    /// No /dev/kvm, no virtualization flag.
    fn unusable_probe(d: &std::path::Path) -> HostProbe {
        std::fs::write(d.join("cpuinfo"), "flags : fpu\n").unwrap();
        HostProbe {
            kvm_device: d.join("no-kvm"),
            cpuinfo: d.join("cpuinfo"),
            pvm_module: PathBuf::from("/nonexistent"),
        }
    }

    fn usable_probe(d: &std::path::Path) -> HostProbe {
        std::fs::write(d.join("cpuinfo"), "flags : fpu svm\n").unwrap();
        std::fs::write(d.join("kvm"), "").unwrap();
        HostProbe {
            kvm_device: d.join("kvm"),
            cpuinfo: d.join("cpuinfo"),
            pvm_module: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn auto_picks_builtin_where_kvm_is_usable() {
        let d = tempfile::tempdir().unwrap();
        let s = select_with(
            BackendChoice::Auto,
            "sh",
            "sh",
            SoftwareEmulation::Refused,
            &usable_probe(d.path()),
        )
        .unwrap();
        assert_eq!(s.vmm.name(), "builtin");
        assert!(s.reason.contains("microVM monitor"), "{}", s.reason);
        let s = select_with(
            BackendChoice::Builtin,
            "sh",
            "sh",
            SoftwareEmulation::Refused,
            &usable_probe(d.path()),
        )
        .unwrap();
        assert_eq!(s.vmm.name(), "builtin");
        // Without the monitor binary there is no backend: QEMU runs in husk-vmm's jail.
        for choice in [BackendChoice::Auto, BackendChoice::Qemu] {
            let err = select_with(
                choice,
                "sh",
                "/nonexistent/husk-vmm",
                SoftwareEmulation::Allowed,
                &usable_probe(d.path()),
            )
            .err()
            .unwrap();
            assert!(err.to_string().contains("/nonexistent/husk-vmm"), "{err}");
        }
    }

    #[test]
    fn explicit_builtin_without_usable_kvm_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let probe = unusable_probe(d.path());
        let err = select_with(
            BackendChoice::Builtin,
            "sh",
            "sh",
            SoftwareEmulation::Allowed,
            &probe,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("backend=builtin") && err.contains("cannot open"),
            "{err}"
        );
    }

    #[test]
    fn software_emulation_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let probe = unusable_probe(d.path());
        for choice in [BackendChoice::Auto, BackendChoice::Qemu] {
            let err = select_with(choice, "sh", "sh", SoftwareEmulation::Refused, &probe)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("no usable hardware virtualization")
                    && err.contains(ALLOW_EMULATION_KEY)
                    && err.contains("not a security boundary"),
                "{err}"
            );
        }
        // KVM that runs guests needs no opt-in.
        let s = select_with(
            BackendChoice::Qemu,
            "sh",
            "sh",
            SoftwareEmulation::Refused,
            &usable_probe(d.path()),
        )
        .unwrap();
        assert_eq!(s.vmm.name(), "qemu-kvm");
    }

    #[test]
    fn missing_qemu_is_a_clear_error() {
        let err = select(
            BackendChoice::Qemu,
            "/nonexistent/qemu",
            SoftwareEmulation::Allowed,
            &HostProbe::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/qemu"));
    }
}
