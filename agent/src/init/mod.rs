//! PID 1 setup of the guest.
//!
//! **Switch root, not `no_pivot`.** The kernel starts `/init` on the initramfs `rootfs`
//! mount, which can never be unmounted or pivoted away from, so `pivot_root` into a container
//! rootfs fails there. Two ways out: create containers with libcontainer's `no_pivot`
//! (MS_MOVE + chroot, as Kata does for initrd guests), or move the guest's own root onto a
//! real mount once at boot. We do the latter, like `switch_root`: a tmpfs, `/init` bound into
//! it, MS_MOVE onto `/`, chroot ([`switch_root`]). It costs a few mounts at boot and lets
//! every container use `pivot_root` — with
//! chroot the old root stays reachable from inside the container's mount namespace, which
//! runc documents as unsafe, and `no_pivot` also forgoes unmounting the host's mounts.
//!
//! After that, [`mounts`] mounts the kernel filesystems and cgroup v2.

pub mod mounts;
pub mod page_reporting;
pub mod switch_root;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    SwitchRoot(#[from] switch_root::SwitchRootError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
}

/// Makes the guest usable: a real root, kernel filesystems, console stdio.
pub fn prepare_guest() -> Result<(), InitError> {
    if switch_root::root_is_initramfs()? {
        switch_root::switch_to_tmpfs()?;
    }
    mounts::mount_kernel_filesystems()?;
    mounts::ensure_console_stdio();
    Ok(())
}
