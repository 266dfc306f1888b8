//! Picks the VMM backend for this host and says why.

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
    let (accel, reason) = match probe.kvm() {
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
        BackendChoice::Qemu => format!("backend=qemu: {reason}"),
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
        std::fs::write(d.path().join("cpuinfo"), "flags : fpu\n").unwrap();
        let probe = HostProbe {
            kvm_device: d.path().join("no-kvm"),
            cpuinfo: d.path().join("cpuinfo"),
            pvm_module: PathBuf::from("/nonexistent"),
        };
        let s = select(BackendChoice::Auto, "sh", &probe).unwrap();
        assert_eq!(s.vmm.name(), "qemu-tcg");
        assert!(
            s.reason.contains("no usable hardware virtualization"),
            "{}",
            s.reason
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
