//! Moves the guest's root from the initramfs onto a tmpfs (see [`crate::init`] for why).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use thiserror::Error;

const NEW_ROOT: &str = "/.husk-root";
const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Error)]
pub enum SwitchRootError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SwitchRootError {
    move |source| SwitchRootError::Io { what, source }
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> SwitchRootError {
    move |source| SwitchRootError::Sys { what, source }
}

/// Whether `/` is the initramfs. Mounts /proc to find out and leaves it mounted:
/// [`switch_to_tmpfs`] needs it and unmounts it, the kernel mounts step keeps it.
pub fn root_is_initramfs() -> Result<bool, SwitchRootError> {
    std::fs::create_dir_all("/proc").map_err(io("creating /proc"))?;
    match mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => return Err(sys("mounting /proc")(e)),
    }
    let mountinfo = std::fs::read_to_string(MOUNTINFO).map_err(io("reading mountinfo"))?;
    Ok(mountinfo_root_is_rootfs(&mountinfo))
}

/// True if the mount on `/` (the last one listed for `/`: later mounts stack on top) is the
/// kernel's `rootfs`.
fn mountinfo_root_is_rootfs(mountinfo: &str) -> bool {
    let mut mounts = mountinfo.lines().filter_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mount_point = fields.split(' ').nth(4)?;
        let fs_type = rest.split(' ').next()?;
        Some((mount_point, fs_type))
    });
    mounts
        .rfind(|(mp, _)| *mp == "/")
        .is_some_and(|(_, fs)| fs == "rootfs")
}

/// Makes a fresh tmpfs `/`: the running binary is bind-mounted read-only at its `/init`,
/// the tmpfs moved onto `/`, and the process chroots into it. Neither a copy nor a re-exec
/// (they cost a tenth of a second of boot under TCG): the binary's pages stay where the
/// kernel unpacked them, which is as much memory as a copy would take.
pub fn switch_to_tmpfs() -> Result<(), SwitchRootError> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(io("reading /proc/self/exe"))?;
    std::fs::create_dir_all(NEW_ROOT).map_err(io("creating the new root"))?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mounting the new root"))?;
    let new_init = Path::new(NEW_ROOT).join("init");
    std::fs::File::create(&new_init).map_err(io("creating the agent's mount point"))?;
    std::fs::set_permissions(&new_init, std::fs::Permissions::from_mode(0o755))
        .map_err(io("making the agent's mount point executable"))?;
    mount(
        Some(&exe),
        &new_init,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("binding the agent into the new root"))?;
    mount(
        None::<&str>,
        &new_init,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys("making the agent's bind read-only"))?;
    let _ = umount2("/proc", MntFlags::MNT_DETACH);

    nix::unistd::chdir(NEW_ROOT).map_err(sys("entering the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("entering /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITRAMFS: &str = "1 1 0:2 / / rw - rootfs rootfs rw,size=116428k,nr_inodes=29107\n\
                             2 1 0:20 / /proc rw,relatime - proc proc rw\n";
    const SWITCHED: &str = "1 1 0:2 / / rw - rootfs rootfs rw,size=116428k\n\
                            20 1 0:21 / / rw - tmpfs rootfs rw,mode=755\n\
                            21 20 0:22 / /proc rw - proc proc rw\n";
    const DISK: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";

    #[test]
    fn recognises_the_initramfs_root() {
        assert!(mountinfo_root_is_rootfs(INITRAMFS));
        assert!(!mountinfo_root_is_rootfs(SWITCHED));
        assert!(!mountinfo_root_is_rootfs(DISK));
        assert!(!mountinfo_root_is_rootfs("garbage\n"));
    }
}
