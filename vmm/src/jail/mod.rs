//! The jail every pod process husk starts for the guest's sake runs in, set up by
//! `husk-vmm` before it reads a byte of guest data, the way Firecracker's jailer does it (no
//! extra tool to install). Three kinds of process get it: husk-vmm itself, the vhost-user
//! vsock backend that serves QEMU (`husk-vmm --vsock-backend`), and QEMU, which husk-vmm
//! jails and then executes (`husk-vmm --exec`, see [`exec`]).
//!
//! 1. Every inherited file descriptor above stderr is closed (but those handed over on
//!    purpose, from fd 3 on).
//! 2. New mount, IPC, UTS and network namespaces (a VM's taps arrive as descriptors):
//!    the process sees no host mount, no host SysV IPC and no abstract Unix socket.
//! 3. A tmpfs root ([`root`]) holding only what [`Contents`] lists (device nodes such as
//!    `/dev/kvm`, owned by the jail's uid; the kernel and initramfs read-only under `/boot`;
//!    for QEMU, the read-only system directories its binary and libraries are in) and the
//!    pod's socket directory as `/run`; `pivot_root` into it, the old root detached, the
//!    root made read-only.
//! 4. Bounded rlimits, no capabilities (bounding set emptied too), an unprivileged uid/gid
//!    of the pod's own, `no_new_privs`, not dumpable, and the parent-death signal armed again
//!    (a credential change clears it) ([`privileges`]).
//!
//! The seccomp filters ([`crate::seccomp`]; QEMU's own `-sandbox`) come after
//! set-up. A process taken over through a device bug is then an unprivileged process in an
//! empty, read-only root that can only move bytes between KVM, guest memory and the pod's
//! sockets.

pub mod exec;
mod privileges;
mod root;

use std::path::PathBuf;

use husk_vmm_config::jail::{INITRD_PATH, KERNEL_PATH, in_socket_dir};
use husk_vmm_config::{Bind, Contents, JailConfig, VmConfig};

pub use privileges::MAX_OPEN_FILES;

const KVM_DEVICE: &str = "/dev/kvm";
/// husk-vmm's threads beyond the vCPUs: the main (device) thread, with room for the
/// runtime's own.
const VMM_EXTRA_THREADS: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("jail: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: the shim exited while the process was starting")]
    ParentGone,
    #[error("jail: {0:?} is not a character device")]
    NotADevice(PathBuf),
    #[error("jail: invalid description: {0}")]
    Invalid(String),
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// Confines this process in `jail` holding `contents`. Must run while the process has one
/// thread and is still root.
pub fn enter(jail: &JailConfig, contents: &Contents) -> Result<(), JailError> {
    contents.validate().map_err(JailError::Invalid)?;
    privileges::close_inherited_fds(contents.inherited_fds)?;
    root::unshare_namespaces(contents.host_network)?;
    root::build(contents, jail)?;
    privileges::set_up(jail, contents.threads)
}

/// Confines husk-vmm as described by `config.jail` and returns the VM description with
/// paths as they are inside the jail.
pub fn enter_vm(config: &VmConfig, jail: &JailConfig) -> Result<VmConfig, JailError> {
    enter(jail, &vm_contents(config))?;
    Ok(inside(config))
}

/// What husk-vmm needs: `/dev/kvm`, the kernel and initramfs, and its taps (inherited).
fn vm_contents(config: &VmConfig) -> Contents {
    let devices = vec![PathBuf::from(KVM_DEVICE)];
    let mut files = vec![Bind {
        host: config.kernel.clone(),
        inside: KERNEL_PATH.into(),
    }];
    if let Some(initrd) = &config.initrd {
        files.push(Bind {
            host: initrd.clone(),
            inside: INITRD_PATH.into(),
        });
    }
    Contents {
        devices,
        files,
        threads: u64::from(config.vcpus) + VMM_EXTRA_THREADS,
        host_network: false,
        // Bounded by the device count the config allows.
        inherited_fds: u32::try_from(config.net.len()).unwrap_or(0),
        ..Contents::default()
    }
}

/// `config` with every host path replaced by where [`root::build`] put it.
fn inside(config: &VmConfig) -> VmConfig {
    let in_run = |p: &PathBuf| in_socket_dir(p);
    let mut inner = config.clone();
    inner.kernel = KERNEL_PATH.into();
    if inner.initrd.is_some() {
        inner.initrd = Some(INITRD_PATH.into());
    }
    if let Some(v) = &mut inner.vsock {
        v.uds_path = in_run(&v.uds_path);
    }
    if let Some(f) = &mut inner.fs {
        f.socket = in_run(&f.socket);
    }
    inner.jail = None;
    inner
}

#[cfg(test)]
mod tests;
