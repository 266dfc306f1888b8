//! Host capability probe: can this host run standard guests under KVM?
//!
//! `/dev/kvm` existing is not enough: hosts with `kvm_pvm` (Pagetable-based VM) expose it but
//! only boot guests built with `CONFIG_PVM_GUEST`; a standard guest hangs early in boot. Usable
//! KVM therefore means: `/dev/kvm` opens read-write, the CPU advertises `vmx` or `svm`, and
//! `kvm_pvm` is not loaded.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Whether KVM can run the husk guest kernel here, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    Usable,
    Unusable(String),
}

/// Paths the probe reads; replaced in tests.
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub kvm_device: PathBuf,
    pub cpuinfo: PathBuf,
    pub pvm_module: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            kvm_device: PathBuf::from("/dev/kvm"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            pvm_module: PathBuf::from("/sys/module/kvm_pvm"),
        }
    }
}

impl HostProbe {
    pub fn kvm(&self) -> KvmSupport {
        if let Err(e) = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.kvm_device)
        {
            return KvmSupport::Unusable(format!("cannot open {}: {e}", self.kvm_device.display()));
        }
        if self.pvm_module.exists() {
            return KvmSupport::Unusable(format!(
                "KVM is provided by kvm_pvm ({} exists), which only runs PVM-patched guests",
                self.pvm_module.display()
            ));
        }
        match cpu_has_hardware_virtualization(&self.cpuinfo) {
            Ok(true) => KvmSupport::Usable,
            Ok(false) => KvmSupport::Unusable(
                "the CPU flags in /proc/cpuinfo show neither vmx nor svm".to_string(),
            ),
            Err(e) => KvmSupport::Unusable(format!("cannot read {}: {e}", self.cpuinfo.display())),
        }
    }

    /// The host's TSC frequency in kHz as the kernel reports it, for guests whose own
    /// calibration is unreliable under emulation.
    pub fn tsc_khz(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.cpuinfo).ok()?;
        let mhz = text
            .lines()
            .find(|l| l.starts_with("cpu MHz"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse::<f64>()
            .ok()?;
        // A finite, positive MHz value is far below u64::MAX kHz: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
    }
}

fn cpu_has_hardware_virtualization(cpuinfo: &Path) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(cpuinfo)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_in(dir: &Path, flags: &str, pvm: bool, kvm: bool) -> HostProbe {
        let cpuinfo = dir.join("cpuinfo");
        std::fs::write(
            &cpuinfo,
            format!("processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: {flags}\n"),
        )
        .unwrap();
        let kvm_device = dir.join("kvm");
        if kvm {
            std::fs::write(&kvm_device, "").unwrap();
        }
        let pvm_module = dir.join("kvm_pvm");
        if pvm {
            std::fs::create_dir(&pvm_module).unwrap();
        }
        HostProbe {
            kvm_device,
            cpuinfo,
            pvm_module,
        }
    }

    #[test]
    fn usable_only_with_device_flags_and_no_pvm() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            probe_in(d.path(), "fpu vmx sse", false, true).kvm(),
            KvmSupport::Usable
        );
    }

    #[test]
    fn pvm_is_unusable() {
        let d = tempfile::tempdir().unwrap();
        let got = probe_in(d.path(), "fpu svm", true, true).kvm();
        assert!(matches!(got, KvmSupport::Unusable(r) if r.contains("kvm_pvm")));
    }

    #[test]
    fn missing_flags_or_device_is_unusable() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            matches!(probe_in(d.path(), "fpu sse", false, true).kvm(), KvmSupport::Unusable(r) if r.contains("vmx"))
        );
        let d = tempfile::tempdir().unwrap();
        assert!(
            matches!(probe_in(d.path(), "vmx", false, false).kvm(), KvmSupport::Unusable(r) if r.contains("cannot open"))
        );
    }

    #[test]
    fn reads_tsc_khz() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            probe_in(d.path(), "", false, false).tsc_khz(),
            Some(2_600_000)
        );
    }
}
