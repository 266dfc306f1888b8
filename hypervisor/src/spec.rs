//! What a backend needs to launch a pod VM. Plain data, validated by [`VmSpec::validate`]
//! before any process is started.

use std::path::{Path, PathBuf};

use husk_vmm_config::LaunchFile;

use crate::vmm::VmmError;
use crate::vmm_ids::IdRange;

/// Guest CID of every pod VM: each VM has its own vsock device, so the CID need not be unique.
pub const GUEST_CID: u64 = 3;
/// Smallest guest memory that boots the husk kernel and agent with room for a container.
pub const MIN_MEMORY_MIB: u32 = 64;
/// The guest kernel is built with NR_CPUS=64.
pub const MAX_VCPUS: u32 = 64;
/// Guest kernel parameters both backends pass. `virtio_mmio.queue_num_max=256` caps every
/// virtqueue at 256 entries (husk's kernel patch
/// `kernel-config/patches/0002-virtio-mmio-queue-num-max.patch`): QEMU's virtio-mmio offers
/// 1024, and virtio-vsock keeps a 4 KiB receive buffer in every slot, so each pod held 3 MiB
/// more guest memory (measured: guest slab 7.6 → 4.2 MiB). 256 is what husk-vmm offers.
/// A kernel without the patch ignores the parameter.
pub const COMMON_KERNEL_PARAMS: &str = "virtio_mmio.queue_num_max=256";

#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Human-readable VM name (the pod's sandbox id), used in process titles and logs.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra guest kernel parameters appended after husk's own.
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Directory the backend may put its sockets in; owned by the caller.
    pub run_dir: PathBuf,
    pub vsock: VsockSpec,
    pub shared_fs: SharedFsSpec,
    /// Where the monitor's unprivileged uid/gid comes from (one per pod).
    pub vmm_ids: IdRange,
    /// The pod's network interfaces, each a virtio-net device of the VM.
    pub net: Vec<NetSpec>,
}

/// A pod interface the VM takes over: its tap, opened by the shim in the pod's network
/// namespace, and the MAC the guest NIC gets.
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// The pod interface it carries (`eth0`), for logs.
    pub name: String,
    pub mac: [u8; 6],
    /// The tap's descriptor; the backend hands the VMM a duplicate.
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl NetSpec {
    /// `aa:bb:cc:dd:ee:ff`.
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The uncompressed `vmlinux` beside a bzImage boots faster (PVH, no decompression); the
/// installed layout has `/usr/share/husk/vmlinux` beside `vmlinuz`.
pub fn preferred_kernel(kernel: &Path) -> PathBuf {
    let sibling = kernel.with_file_name("vmlinux");
    if kernel.file_name() != sibling.file_name() && sibling.is_file() {
        sibling
    } else {
        kernel.to_path_buf()
    }
}

impl VmSpec {
    /// The kernel both monitors boot: [`preferred_kernel`] of the configured one.
    pub fn boot_kernel(&self) -> PathBuf {
        preferred_kernel(&self.kernel)
    }

    /// Duplicates of the taps' descriptors, for the VMM to inherit from fd 3 on.
    pub(crate) fn tap_fds(&self) -> Result<Vec<std::os::fd::OwnedFd>, VmmError> {
        self.net
            .iter()
            .map(|n| {
                n.tap.try_clone().map_err(|source| VmmError::Spawn {
                    what: "the VM's network (duplicating a tap)",
                    source,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct VsockSpec {
    pub guest_cid: u64,
    /// Host side of the hybrid vsock: `CONNECT <port>\n` here reaches guest port `<port>`.
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SharedFsSpec {
    /// virtio-fs tag the guest mounts.
    pub tag: String,
    /// Host directory exported to the guest.
    pub shared_dir: PathBuf,
    pub virtiofsd: PathBuf,
    /// virtiofsd `--cache` policy: `auto`, `always` or `never`.
    pub cache: String,
}

impl VmSpec {
    /// Checks everything that can be checked before starting processes, with errors that
    /// name the offending setting.
    pub fn validate(&self) -> Result<(), VmmError> {
        require_file("guest kernel", &self.kernel)?;
        require_file("guest initramfs", &self.initrd)?;
        require_file("virtiofsd", &self.shared_fs.virtiofsd)?;
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(VmmError::InvalidSpec(format!(
                "vcpus = {} is outside 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(VmmError::InvalidSpec(format!(
                "memory = {} MiB is below the {MIN_MEMORY_MIB} MiB the guest needs",
                self.memory_mib
            )));
        }
        if !["auto", "always", "never"].contains(&self.shared_fs.cache.as_str()) {
            return Err(VmmError::InvalidSpec(format!(
                "virtio-fs cache policy {:?} is not one of auto, always, never",
                self.shared_fs.cache
            )));
        }
        if self.shared_fs.tag.is_empty() || self.shared_fs.tag.len() > 36 {
            return Err(VmmError::InvalidSpec(
                "virtio-fs tag must be 1..=36 bytes".into(),
            ));
        }
        Ok(())
    }
}

impl VmSpec {
    /// The directory of the VM's sockets: the vsock socket's, which must be a directory of
    /// its own below `run_dir` (the monitor gets access to it, and to nothing else there).
    /// Created if missing, mode 0700.
    pub fn socket_dir(&self) -> Result<PathBuf, VmmError> {
        let dir = self
            .vsock
            .uds_path
            .parent()
            .filter(|p| *p != self.run_dir && p.starts_with(&self.run_dir))
            .ok_or_else(|| {
                VmmError::InvalidSpec(format!(
                    "the vsock socket {:?} must be in a directory of its own below {:?}",
                    self.vsock.uds_path, self.run_dir
                ))
            })?
            .to_path_buf();
        create_private_dir(&dir)?;
        Ok(dir)
    }
}

/// `dir` and its missing parents, mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| VmmError::Spawn {
            what: "the VM (creating its socket directories)",
            source,
        })
}

fn require_file(what: &'static str, path: &Path) -> Result<(), VmmError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmmError::MissingFile {
            what,
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        }),
        Err(source) => Err(VmmError::UnreadableFile {
            what,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Validates `file` and writes it to `path` for `husk-vmm` (`who`: the process it is for).
pub(crate) fn write_launch_file<F: LaunchFile>(
    file: &F,
    path: &Path,
    who: &'static str,
) -> Result<(), VmmError> {
    file.validate()?;
    let json = file.to_json()?;
    std::fs::write(path, json).map_err(|source| VmmError::Spawn { what: who, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        for f in ["k", "i", "v"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        VmSpec {
            name: "pod".into(),
            kernel: dir.join("k"),
            initrd: dir.join("i"),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            run_dir: dir.to_path_buf(),
            vsock: VsockSpec {
                guest_cid: GUEST_CID,
                uds_path: dir.join("vsock.sock"),
            },
            shared_fs: SharedFsSpec {
                tag: "husk".into(),
                shared_dir: dir.to_path_buf(),
                virtiofsd: dir.join("v"),
                cache: "auto".into(),
            },
            vmm_ids: crate::IdRange {
                first: 1_000_000,
                count: 16,
                lock_dir: dir.join("ids"),
            },
            net: Vec::new(),
        }
    }

    #[test]
    fn accepts_a_complete_spec() {
        let d = tempfile::tempdir().unwrap();
        spec(d.path()).validate().unwrap();
    }

    #[test]
    fn names_the_missing_kernel() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path());
        s.kernel = d.path().join("nope");
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("guest kernel") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_sizes_and_cache() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path());
        s.vcpus = 0;
        assert!(s.validate().is_err());
        let mut s = spec(d.path());
        s.memory_mib = 16;
        assert!(s.validate().is_err());
        let mut s = spec(d.path());
        s.shared_fs.cache = "sometimes".into();
        assert!(s.validate().is_err());
    }
}
