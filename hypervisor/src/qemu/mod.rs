//! QEMU backend: `qemu-system-x86_64` with KVM where it can run standard guests, TCG
//! (software emulation) elsewhere. The hybrid-vsock device runs in this process as a
//! vhost-user backend; virtio-fs is served by a virtiofsd child.
//!
//! QEMU cannot jail itself as husk-vmm does (its `-runas` needs the set*id calls its own
//! `-sandbox elevateprivileges=deny` forbids), so the shim confines it before exec
//! ([`crate::child_confine`]): a private `/dev` with only the nodes it needs and a uid/gid
//! of the pod's own, then QEMU's seccomp sandbox on top.

mod args;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use slog::{Logger, info};
use tokio::process::Command;

use crate::vm_processes::VmProcesses;
pub use args::{Accel, FALLBACK_TSC_KHZ, kernel_cmdline, qemu_args};

use crate::child::{Stdout, Supervised};
use crate::child_confine::Confinement;
use crate::spec::VmSpec;
use crate::virtiofsd;
use crate::vmm::{VmHandle, Vmm, VmmError};
use crate::vsock::{VhostUserVsock, VhostUserVsockConfig};

/// Socket names inside the VM's run directory.
const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// Device nodes QEMU finds in its private `/dev` (random seeds, null input).
const SHARED_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];
const KVM_DEVICE: &str = "/dev/kvm";
const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";

pub struct QemuVmm {
    binary: PathBuf,
    accel: Accel,
}

impl QemuVmm {
    /// `binary` is a path or a name looked up on `PATH`.
    pub fn new(binary: &str, accel: Accel) -> Result<Self, VmmError> {
        Ok(Self {
            binary: resolve_binary(binary)?,
            accel,
        })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn name(&self) -> String {
        match self.accel {
            Accel::Kvm => "qemu-kvm".into(),
            Accel::Tcg { .. } => "qemu-tcg".into(),
        }
    }

    async fn launch(&self, spec: &VmSpec, log: &Logger) -> Result<Box<dyn VmHandle>, VmmError> {
        spec.validate()?;
        for (what, path) in [
            ("guest kernel", &spec.kernel),
            ("guest initramfs", &spec.initrd),
        ] {
            readable_by_any_uid(what, path)?;
        }
        // QEMU's sockets sit in the VM's socket directory, which its uid may enter (0711)
        // but not change; each socket is its uid's.
        let sockets = spec.socket_dir()?;
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| VmmError::Spawn {
                what: "qemu (opening its socket directory to its uid)",
                source,
            },
        )?;
        let vhost_path = sockets.join(VHOST_VSOCK_SOCKET);
        let fs_path = sockets.join(VIRTIOFSD_SOCKET);
        let vhost_listener =
            std::os::unix::net::UnixListener::bind(&vhost_path).map_err(|source| {
                VmmError::Socket {
                    path: vhost_path.clone(),
                    source,
                }
            })?;
        let vsock = VhostUserVsock::start(
            VhostUserVsockConfig {
                guest_cid: spec.vsock.guest_cid,
                uds_path: spec.vsock.uds_path.clone(),
            },
            vhost_listener,
            log.new(slog::o!("device" => "vsock")),
        )?;
        let mut vm = VmProcesses::new(
            &spec.vsock.uds_path,
            vec![vhost_path.clone(), fs_path.clone()],
            crate::child::describe,
        );
        vm.add_cleanup(Box::new(move || vsock.stop()));
        vm.add_helper(virtiofsd::spawn(&spec.shared_fs, &fs_path, log)?);
        // QEMU runs as a uid of the pod's own; only it may connect to its two sockets.
        let id = spec.vmm_ids.claim(&spec.name)?;
        let uid = id.id();
        for socket in [&vhost_path, &fs_path] {
            std::os::unix::fs::chown(socket, Some(uid), Some(uid)).map_err(|source| {
                VmmError::Spawn {
                    what: "qemu (handing its sockets to its uid)",
                    source,
                }
            })?;
        }
        // Released once QEMU is gone (cleanups run after the processes).
        vm.add_cleanup(Box::new(move || drop(id)));
        let own_devices: &[&str] = match self.accel {
            Accel::Kvm => &[KVM_DEVICE],
            Accel::Tcg { .. } => &[],
        };
        let confine = Confinement::new(uid, uid, SHARED_DEVICES, own_devices)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(qemu_args(spec, self.accel, &vhost_path, &fs_path));
        let qemu = Supervised::spawn("qemu", cmd, Stdout::Log, None, Some(confine), log)?;
        info!(log, "VM started"; "vmm" => self.name(), "pid" => qemu.pid(),
              "vcpus" => spec.vcpus, "memory_mib" => spec.memory_mib, "vmm_uid" => uid);
        vm.set_vmm(qemu);
        Ok(Box::new(vm))
    }
}

/// QEMU opens the kernel and initramfs as its unprivileged uid: the file must be readable,
/// and every directory above it searchable, by others.
fn readable_by_any_uid(what: &'static str, path: &Path) -> Result<(), VmmError> {
    let refuse = |at: &Path| VmmError::MissingFile {
        what,
        path: path.to_path_buf(),
        reason: format!(
            "QEMU runs as an unprivileged uid and cannot read it ({at:?} is not open to others); make the file world-readable and its directories world-searchable, as the installed /usr/share/husk is"
        ),
    };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).ok();
    if mode(path).is_none_or(|m| m & 0o004 == 0) {
        return Err(refuse(path));
    }
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if mode(dir).is_none_or(|m| m & 0o001 == 0) {
            return Err(refuse(dir));
        }
    }
    Ok(())
}

fn resolve_binary(name: &str) -> Result<PathBuf, VmmError> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| VmmError::HypervisorBinary {
            name: name.to_string(),
            reason: if name.contains('/') {
                "does not exist or is not executable".into()
            } else {
                "was not found on PATH".into()
            },
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_qemu_cannot_read_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let image = open.join("initrd.img");
        std::fs::write(&image, "").unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
        readable_by_any_uid("guest initramfs", &image).unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = readable_by_any_uid("guest initramfs", &image)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unprivileged uid") && err.contains("initrd.img"),
            "{err}"
        );
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(readable_by_any_uid("guest initramfs", &image).is_err());
    }

    #[test]
    fn resolves_names_on_path_and_reports_missing() {
        assert!(resolve_binary("sh").is_ok());
        let err = resolve_binary("/nonexistent/qemu")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/nonexistent/qemu") && err.contains("qemu_path"),
            "{err}"
        );
        let err = resolve_binary("no-such-qemu-binary")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("PATH"), "{err}");
    }
}
