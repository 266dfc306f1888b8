//! The VM description `husk-vmm --config` runs: plain data, written as JSON by the shim's
//! launcher (`husk_hypervisor::builtin`) into the pod's run directory and validated on both
//! sides before anything is created.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jail::JailConfig;
use crate::{ConfigError, LaunchFile};

/// Smallest guest the monitor accepts (kernel + initramfs + page tables).
pub const MIN_MEMORY_MIB: u32 = 32;
/// Guest RAM ceiling: far above any pod, low enough that sizes never overflow.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The MP table and the guest kernel (`NR_CPUS=64`) bound the vCPU count.
pub const MAX_VCPUS: u8 = 64;
/// Room the monitor has for the kernel command line (its boot layout reserves this much).
pub const MAX_CMDLINE_LEN: usize = 2048;
/// The monitor appends one `virtio_mmio.device=` entry per device (about 40 bytes each).
const CMDLINE_RESERVE: usize = 200;
/// virtio-fs: the tag field of the device's config space (virtio 1.2, 5.11.4).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Virtio devices each take an IRQ line of their own (5..=23).
pub const MAX_DEVICES: usize = 19;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// For logs and the process title.
    pub name: String,
    /// ELF `vmlinux` (PVH entry used when present) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; the monitor appends its `virtio_mmio.device=` entries.
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub fs: Option<FsConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Where and as whom the monitor confines itself before it builds the VM (see
    /// [`super::jail`]). Without it the monitor runs as started: for tests and by hand.
    #[serde(default)]
    pub jail: Option<JailConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Hybrid-vsock Unix socket; must not exist yet.
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The pod interface the device carries (`eth0`), for logs.
    pub name: String,
    /// The tap, a descriptor the monitor inherits: the `i`-th device's is fd `3 + i`
    /// ([`FIRST_TAP_FD`]), already set up by the shim in the pod's network namespace.
    pub fd: i32,
    /// The guest NIC's MAC.
    pub mac: [u8; 6],
}

/// The first inherited tap descriptor; the others follow in device order.
pub const FIRST_TAP_FD: i32 = 3;

impl VmConfig {
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

impl LaunchFile for VmConfig {
    const WHAT: &'static str = "VM description";

    /// What the monitor's own parts check again when they are built (the guest CID by the
    /// vsock device) is left to them.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return bad(format!("vcpus = {} is outside 1..={MAX_VCPUS}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return bad(format!(
                "memory_mib = {} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                self.memory_mib
            ));
        }
        if self.cmdline.len() + CMDLINE_RESERVE >= MAX_CMDLINE_LEN {
            return bad(format!(
                "kernel command line is {} bytes, too long",
                self.cmdline.len()
            ));
        }
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > MAX_FS_TAG_LEN {
                return bad(format!("virtio-fs tag must be 1..={MAX_FS_TAG_LEN} bytes"));
            }
        }
        let devices = usize::from(self.vsock.is_some()) + usize::from(self.fs.is_some());
        if devices + self.net.len() > MAX_DEVICES {
            return bad("too many devices for the available IRQ lines".into());
        }
        for (n, fd) in self.net.iter().zip(FIRST_TAP_FD..) {
            if n.mac[0] & 1 == 1 {
                return bad(format!("MAC of {} is a multicast address", n.name));
            }
            if n.fd != fd {
                return bad(format!("the tap of {} is fd {}, not {fd}", n.name, n.fd));
            }
        }
        let Some(jail) = &self.jail else {
            return Ok(());
        };
        jail.validate().map_err(ConfigError::Invalid)?;
        let sockets = self
            .vsock
            .iter()
            .map(|v| &v.uds_path)
            .chain(self.fs.iter().map(|f| &f.socket));
        for socket in sockets {
            jail.check_socket(socket).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> VmConfig {
        VmConfig {
            name: "pod".into(),
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into(),
            }),
            fs: Some(FsConfig {
                socket: "/run/fs.sock".into(),
                tag: "husk".into(),
            }),
            net: vec![NetConfig {
                name: "eth0".into(),
                fd: 3,
                mac: [2, 0, 0, 0, 0, 1],
            }],
            jail: Some(JailConfig {
                root: "/state/jail".into(),
                sockets: "/run".into(),
                uid: 1000,
                gid: 1000,
            }),
        }
    }

    #[test]
    fn round_trips_through_json_and_validates() {
        let c = sample();
        c.validate().unwrap();
        let back: VmConfig = serde_json::from_str(&c.to_json().unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.memory_bytes(), 256 << 20);
    }

    #[test]
    fn rejects_bad_values_and_unknown_fields() {
        let mut c = sample();
        c.vcpus = 0;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.memory_mib = 8;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.fs.as_mut().unwrap().tag = "t".repeat(37);
        assert!(c.validate().is_err());
        let mut c = sample();
        c.net[0].mac[0] = 1;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.net[0].fd = 4;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.cmdline = "x".repeat(2000);
        assert!(c.validate().is_err());
        let mut c = sample();
        c.jail.as_mut().unwrap().uid = 0;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.fs.as_mut().unwrap().socket = "/elsewhere/fs.sock".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("socket directory")
        );
        let mut c = sample();
        c.jail.as_mut().unwrap().root = "rel".into();
        assert!(c.validate().is_err());
        let text = c.to_json().unwrap().replacen('{', "{\"extra\": 1,", 1);
        assert!(serde_json::from_str::<VmConfig>(&text).is_err());
    }

    #[test]
    fn reads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, sample().to_json().unwrap()).unwrap();
        assert_eq!(VmConfig::from_file(&path).unwrap(), sample());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            VmConfig::from_file(&path),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            VmConfig::from_file(&dir.path().join("none")),
            Err(ConfigError::Read { .. })
        ));
    }
}
