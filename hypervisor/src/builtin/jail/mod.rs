//! The monitor's jail, set up by `husk-vmm` itself before it reads a byte of guest data, the
//! way Firecracker's jailer does it (no extra tool to install):
//!
//! 1. Every inherited file descriptor above stderr is closed.
//! 2. New mount, IPC and UTS namespaces, and a new network namespace unless the VM has taps:
//!    the monitor sees no host mount, no host SysV IPC and no abstract Unix socket.
//! 3. A tmpfs root ([`root`]) holding only `/dev/kvm` (and `/dev/net/tun` with taps), the
//!    kernel and initramfs read-only under `/boot`, and the pod's socket directory as `/run`;
//!    `pivot_root` into it, the old root detached, the root made read-only.
//! 4. Bounded rlimits, no capabilities (bounding set emptied too), an unprivileged uid/gid
//!    of the pod's own, `no_new_privs`, not dumpable, and the parent-death signal armed again
//!    (a credential change clears it) ([`privileges`]).
//!
//! The seccomp filters ([`super::seccomp`]) come after the VM is built. A monitor taken
//! over through a device bug is then an unprivileged process in an empty, read-only root
//! that can only move bytes between KVM, guest memory and the pod's sockets.

mod privileges;
mod root;

use std::path::PathBuf;

use super::config::{JailConfig, VmConfig};

pub use privileges::MAX_OPEN_FILES;

/// Where the jail's parts appear inside it.
pub const KERNEL_PATH: &str = "/boot/kernel";
pub const INITRD_PATH: &str = "/boot/initrd";
pub const SOCKET_DIR: &str = "/run";

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
    #[error("jail: the shim exited while the monitor was starting")]
    ParentGone,
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// Confines this process as described by `config.jail` and returns the VM description with
/// paths as they are inside the jail. Must run while the process has one thread and is
/// still root.
pub fn enter(config: &VmConfig, jail: &JailConfig) -> Result<VmConfig, JailError> {
    privileges::close_inherited_fds()?;
    root::unshare_namespaces(!config.net.is_empty())?;
    root::build(config, jail)?;
    privileges::set_up(jail, config.vcpus)?;
    Ok(inside(config))
}

/// `config` with every host path replaced by where [`root::build`] put it.
fn inside(config: &VmConfig) -> VmConfig {
    let in_run = |p: &PathBuf| match p.file_name() {
        Some(name) => PathBuf::from(SOCKET_DIR).join(name),
        None => p.clone(),
    };
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
