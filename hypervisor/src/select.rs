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

/// The chosen backend and a sentence explaining the choice (logged, and shown by `check`).
pub struct Selection {
    pub vmm: Box<dyn Vmm>,
    pub reason: String,
}

pub fn select(
    choice: BackendChoice,
    qemu_path: &str,
    probe: &HostProbe,
) -> Result<Selection, VmmError> {
    select_with(choice, qemu_path, VMM_BINARY, probe)
}

/// [`select`] with an explicit `husk-vmm` path (a name is looked up beside the running
/// executable, then on `PATH`).
pub fn select_with(
    choice: BackendChoice,
    qemu_path: &str,
    vmm_path: &str,
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
            });
        }
        (BackendChoice::Auto, KvmSupport::Usable) => match BuiltinVmm::new(vmm_path) {
            Ok(vmm) => {
                return Ok(Selection {
                    vmm: Box::new(vmm),
                    reason: "backend=auto: KVM can run standard guests here: husk's microVM monitor (husk-vmm)".into(),
                });
            }
            Err(e) => {
                let q = QemuVmm::new(qemu_path, Accel::Kvm)?;
                return Ok(Selection {
                    vmm: Box::new(q),
                    reason: format!("backend=auto: KVM is usable but {e}: QEMU with KVM"),
                });
            }
        },
        _ => {}
    }
    let (accel, reason) = match kvm {
        KvmSupport::Usable => (
            Accel::Kvm,
            "KVM can run standard guests here: QEMU with KVM".to_string(),
        ),
        KvmSupport::Unusable(why) => (
            Accel::Tcg {
                tsc_khz: probe.tsc_khz().unwrap_or(FALLBACK_TSC_KHZ),
            },
            format!(
                "no usable hardware virtualization ({why}): QEMU with TCG software emulation, expect slow pods"
            ),
        ),
    };
    let reason = match choice {
        BackendChoice::Auto => format!("backend=auto: {reason}"),
        BackendChoice::Qemu | BackendChoice::Builtin => format!("backend=qemu: {reason}"),
    };
    Ok(Selection {
        vmm: Box::new(QemuVmm::new(qemu_path, accel)?),
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
        let s = select(BackendChoice::Auto, "sh", &probe).unwrap();
        assert_eq!(s.vmm.name(), "qemu-tcg");
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
        let s = select_with(BackendChoice::Auto, "sh", "sh", &usable_probe(d.path())).unwrap();
        assert_eq!(s.vmm.name(), "builtin");
        assert!(s.reason.contains("microVM monitor"), "{}", s.reason);
        let s = select_with(BackendChoice::Builtin, "sh", "sh", &usable_probe(d.path())).unwrap();
        assert_eq!(s.vmm.name(), "builtin");
        // Without the monitor binary, auto still runs pods: QEMU with KVM.
        let s = select_with(
            BackendChoice::Auto,
            "sh",
            "/nonexistent/husk-vmm",
            &usable_probe(d.path()),
        )
        .unwrap();
        assert_eq!(s.vmm.name(), "qemu-kvm");
        assert!(s.reason.contains("husk-vmm"), "{}", s.reason);
    }

    #[test]
    fn explicit_builtin_without_usable_kvm_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let probe = unusable_probe(d.path());
        let err = select_with(BackendChoice::Builtin, "sh", "sh", &probe)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("backend=builtin") && err.contains("cannot open"),
            "{err}"
        );
    }

    #[test]
    fn missing_qemu_is_a_clear_error() {
        let err = select(
            BackendChoice::Qemu,
            "/nonexistent/qemu",
            &HostProbe::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/qemu"));
    }
}
