//! QEMU backend: `qemu-system-x86_64` with KVM where it can run standard guests, TCG
//! (software emulation) elsewhere. Three processes per VM besides the shim, each confined:
//!
//! - QEMU, started by husk-vmm inside the jail husk's own monitor gets ([`jail`]; `husk-vmm
//!   --exec`): an empty read-only root with only the system's program directories, a
//!   private `/dev`, a uid of the pod's own, no capabilities; then QEMU's own `-sandbox`;
//! - the hybrid-vsock device as a vhost-user backend (`husk-vmm --vsock-backend`, jailed
//!   with its own uid and seccomp filter; `husk-vmm --vsock-backend`);
//! - virtiofsd with its namespace sandbox.
//!
//! Sockets: QEMU's directory (`qemu/`, root's, mode 0711, the jail's `/run`) holds the two
//! vhost-user sockets the shim binds and hands to QEMU's uid; the vsock socket directory
//! (`vm/`) belongs to the backend's uid, which creates the hybrid socket there.

mod args;
mod jail;

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use slog::{Logger, info};
use tokio::process::Command;

use crate::vm_processes::VmProcesses;
pub use args::{Accel, FALLBACK_TSC_KHZ, MACHINE, QemuPaths, TCG_ACCEL, kernel_cmdline, qemu_args};

use crate::binaries::{self, Search};
use crate::child::{Stdout, Supervised};
use crate::spec::{VmSpec, create_private_dir, write_launch_file};
use crate::virtiofsd;
use crate::vmm::{VmHandle, Vmm, VmmError};
use crate::vmm_ids::IdClaim;
use husk_vmm_config::jail::{INITRD_PATH, KERNEL_PATH, in_socket_dir};
use husk_vmm_config::{BackendConfig, Contents, ExecConfig, JailConfig, LaunchFile};

/// Names inside the VM's run directory.
const QEMU_SOCKET_DIR: &str = "qemu";
const QEMU_ROOT_DIR: &str = "qemu-root";
const BACKEND_ROOT_DIR: &str = "vsock-root";
const QEMU_CONFIG: &str = "qemu-exec.json";
const BACKEND_CONFIG: &str = "vsock-backend.json";
const VHOST_VSOCK_SOCKET: &str = "vhost-vsock.sock";
const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
/// QEMU's only environment variable: the pod's run directory.
pub const POD_DIR_ENV: &str = "HUSK_POD_DIR";

pub struct QemuVmm {
    binary: PathBuf,
    /// husk-vmm: QEMU's jail and its vsock backend.
    jailer: PathBuf,
    accel: Accel,
}

impl QemuVmm {
    /// `binary` is a path or a name looked up on `PATH`; `jailer` is husk-vmm, a path or a
    /// name looked up beside the running executable and on `PATH`.
    pub fn new(binary: &str, jailer: &str, accel: Accel) -> Result<Self, VmmError> {
        let binary = binaries::locate(binary, Search::Path)?;
        // The jail shows the real directories: a binary reached through a link is named by
        // its real path.
        let binary = std::fs::canonicalize(&binary).unwrap_or(binary);
        Ok(Self {
            binary,
            jailer: binaries::locate(jailer, Search::BesideShimThenPath)?,
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
            ("guest kernel", &spec.boot_kernel()),
            ("guest initramfs", &spec.initrd),
        ] {
            readable_by_others(what, path)?;
        }
        let dirs = Dirs::create(spec)?;
        let qemu_id = spec.vmm_ids.claim(&spec.name)?;
        let backend_id = spec.vmm_ids.claim(&format!("{}/vsock", spec.name))?;
        let vhost_path = dirs.qemu_sockets.join(VHOST_VSOCK_SOCKET);
        let fs_path = dirs.qemu_sockets.join(VIRTIOFSD_SOCKET);
        let qemu_config = spec.run_dir.join(QEMU_CONFIG);
        let backend_config = spec.run_dir.join(BACKEND_CONFIG);
        let mut vm = VmProcesses::new(
            &spec.vsock.uds_path,
            vec![
                vhost_path.clone(),
                fs_path.clone(),
                qemu_config.clone(),
                backend_config.clone(),
            ],
            crate::child::describe,
        );
        let (qemu_uid, backend_uid) = (qemu_id.id(), backend_id.id());
        // Runs once every process is gone and the files are removed.
        let own_dirs = dirs.clone();
        vm.add_cleanup(Box::new(move || own_dirs.remove([qemu_id, backend_id])));
        let backend =
            self.spawn_vsock_backend(spec, backend_uid, &vhost_path, &backend_config, log)?;
        vm.add_helper(backend);
        vm.add_helper(virtiofsd::spawn(&spec.shared_fs, &fs_path, log)?);
        // QEMU runs as a uid of the pod's own; only it may connect to its two sockets.
        for socket in [&vhost_path, &fs_path] {
            chown(socket, qemu_uid, "qemu")?;
        }
        let exec = self.exec_config(spec, &dirs, qemu_uid, &vhost_path, &fs_path);
        write_launch_file(&exec, &qemu_config, "qemu")?;
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--exec").arg(&qemu_config);
        let qemu = Supervised::spawn("qemu", cmd, Stdout::Log, spec.tap_fds()?, log)?;
        info!(log, "VM started"; "vmm" => self.name(), "pid" => qemu.pid(),
              "vcpus" => spec.vcpus, "memory_mib" => spec.memory_mib,
              "vmm_uid" => qemu_uid, "vsock_backend_uid" => backend_uid);
        vm.set_vmm(qemu);
        Ok(Box::new(vm))
    }
}

impl QemuVmm {
    /// husk-vmm as QEMU's hybrid-vsock device (`--vsock-backend`), jailed as `uid`, serving
    /// vhost-user on a listener at `vhost_path` that it inherits.
    fn spawn_vsock_backend(
        &self,
        spec: &VmSpec,
        uid: u32,
        vhost_path: &Path,
        config_path: &Path,
        log: &Logger,
    ) -> Result<Supervised, VmmError> {
        let vhost_listener =
            std::os::unix::net::UnixListener::bind(vhost_path).map_err(|source| {
                VmmError::Socket {
                    path: vhost_path.to_path_buf(),
                    source,
                }
            })?;
        let backend = BackendConfig {
            name: spec.name.clone(),
            guest_cid: spec.vsock.guest_cid,
            uds_path: spec.vsock.uds_path.clone(),
            jail: JailConfig {
                root: spec.run_dir.join(BACKEND_ROOT_DIR),
                sockets: spec.socket_dir()?,
                uid,
                gid: uid,
            },
        };
        backend.validate()?;
        // The backend creates the hybrid socket in its directory, as its own uid.
        chown(&backend.jail.sockets, uid, "the vsock backend")?;
        write_launch_file(&backend, config_path, "the vsock backend")?;
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--vsock-backend").arg(config_path);
        Supervised::spawn(
            "vsock-backend",
            cmd,
            Stdout::Null,
            vec![OwnedFd::from(vhost_listener)],
            log,
        )
    }

    fn exec_config(
        &self,
        spec: &VmSpec,
        dirs: &Dirs,
        uid: u32,
        vhost: &Path,
        fs: &Path,
    ) -> ExecConfig {
        let kvm = self.accel == Accel::Kvm;
        let paths = QemuPaths {
            kernel: Path::new(KERNEL_PATH),
            initrd: Path::new(INITRD_PATH),
            vhost_vsock: &in_socket_dir(vhost),
            virtiofsd: &in_socket_dir(fs),
        };
        ExecConfig {
            jail: JailConfig {
                root: dirs.qemu_root.clone(),
                sockets: dirs.qemu_sockets.clone(),
                uid,
                gid: uid,
            },
            contents: Contents {
                // The taps, from fd 3 on.
                inherited_fds: u32::try_from(spec.net.len()).unwrap_or(0),
                ..jail::contents(
                    &self.binary,
                    &spec.boot_kernel(),
                    &spec.initrd,
                    spec.vcpus,
                    kvm,
                )
            },
            program: self.binary.clone(),
            args: qemu_args(spec, self.accel, &paths),
            // Names the pod (its full id) for `ps e` and leak checks: QEMU's arguments hold
            // only paths inside its jail and a shortened name.
            env: vec![format!("{POD_DIR_ENV}={}", spec.run_dir.display())],
        }
    }
}

/// The VM's directories below its run directory: QEMU's sockets, and the empty mount
/// points of the two jail roots.
#[derive(Clone)]
struct Dirs {
    qemu_sockets: PathBuf,
    qemu_root: PathBuf,
    backend_root: PathBuf,
}

impl Dirs {
    fn create(spec: &VmSpec) -> Result<Self, VmmError> {
        let dirs = Self {
            qemu_sockets: spec.run_dir.join(QEMU_SOCKET_DIR),
            qemu_root: spec.run_dir.join(QEMU_ROOT_DIR),
            backend_root: spec.run_dir.join(BACKEND_ROOT_DIR),
        };
        for dir in [&dirs.qemu_sockets, &dirs.qemu_root, &dirs.backend_root] {
            create_private_dir(dir)?;
        }
        // QEMU's uid may enter its socket directory but not change it.
        std::fs::set_permissions(&dirs.qemu_sockets, std::fs::Permissions::from_mode(0o711))
            .map_err(|source| VmmError::Spawn {
                what: "qemu (opening its socket directory to its uid)",
                source,
            })?;
        Ok(dirs)
    }

    /// After the processes exited and their files are gone: the directories, then the ids.
    fn remove(self, ids: [IdClaim; 2]) {
        for dir in [&self.qemu_sockets, &self.qemu_root, &self.backend_root] {
            let _ = std::fs::remove_dir(dir);
        }
        drop(ids);
    }
}

fn chown(path: &Path, uid: u32, who: &'static str) -> Result<(), VmmError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .map_err(|source| VmmError::Spawn { what: who, source })
}

/// QEMU opens the kernel and initramfs as its unprivileged uid. The jail binds them in as
/// root, so the directories above them do not matter, but the file must be readable by
/// others.
fn readable_by_others(what: &'static str, path: &Path) -> Result<(), VmmError> {
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).ok();
    if mode.is_none_or(|m| m & 0o004 == 0) {
        return Err(VmmError::MissingFile {
            what,
            path: path.to_path_buf(),
            reason: "QEMU runs as an unprivileged uid and cannot read it; make the file world-readable, as the installed /usr/share/husk files are".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_qemu_cannot_read_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("initrd.img");
        std::fs::write(&image, "").unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The directory is root's alone: the jail binds the file in as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        readable_by_others("guest initramfs", &image).unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = readable_by_others("guest initramfs", &image)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unprivileged uid") && err.contains("initrd.img"),
            "{err}"
        );
    }
}
