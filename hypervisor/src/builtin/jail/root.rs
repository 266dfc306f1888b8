//! The jail's namespaces and root filesystem.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, mknod};
use nix::unistd::{Gid, Uid, chown, pivot_root};

use super::{INITRD_PATH, JailError, KERNEL_PATH, SOCKET_DIR, io, sys};
use crate::builtin::config::{JailConfig, VmConfig};

/// The root holds a few directories, device nodes and mount points; nothing is written later.
const ROOT_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=32,mode=0755";
const KVM_DEVICE: &str = "/dev/kvm";
const TUN_DEVICE: &str = "/dev/net/tun";

/// New mount, IPC and UTS namespaces; a new network namespace too unless the VM uses taps
/// (which live in the monitor's network namespace). An empty network namespace also
/// hides the host's abstract Unix sockets.
pub(super) fn unshare_namespaces(uses_taps: bool) -> Result<(), JailError> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if !uses_taps {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(sys("unshare namespaces"))?;
    // Nothing mounted from here on propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("making / a slave mount"))
}

/// Builds the root on `jail.root` and pivots into it.
pub(super) fn build(config: &VmConfig, jail: &JailConfig) -> Result<(), JailError> {
    let root = jail.root.as_path();
    mount(
        Some("husk-vmm"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )
    .map_err(sys(format!("mounting the root tmpfs on {root:?}")))?;
    for dir in ["boot", "dev", "run"] {
        make_dir(&root.join(dir))?;
    }
    let owner = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
    device_node(KVM_DEVICE, root, owner)?;
    if !config.net.is_empty() {
        make_dir(&root.join("dev/net"))?;
        device_node(TUN_DEVICE, root, owner)?;
    }
    let read_only =
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    bind_file(&config.kernel, &inside(root, KERNEL_PATH), read_only)?;
    if let Some(initrd) = &config.initrd {
        bind_file(initrd, &inside(root, INITRD_PATH), read_only)?;
    }
    bind(
        &jail.sockets,
        &inside(root, SOCKET_DIR),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    pivot(root)
}

fn inside(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn make_dir(path: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io(format!("creating {path:?}")))
}

/// A node for the host device `host` (same type and numbers), usable only by the jail's ids.
fn device_node(host: &str, root: &Path, (uid, gid): (Uid, Gid)) -> Result<(), JailError> {
    let rdev = std::fs::metadata(host)
        .map_err(io(format!("{host} (the monitor needs it)")))?
        .rdev();
    let node = inside(root, host);
    mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), rdev)
        .map_err(sys(format!("creating {node:?}")))?;
    chown(&node, Some(uid), Some(gid)).map_err(sys(format!("chown {node:?}")))
}

fn bind_file(source: &Path, target: &Path, flags: MsFlags) -> Result<(), JailError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(target)
        .map_err(io(format!("creating {target:?}")))?;
    bind(source, target, flags)
}

/// Bind-mounts `source` on `target`, then applies `flags` (a bind mount takes them only on
/// a remount).
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), JailError> {
    let what = || format!("bind-mounting {source:?} on {target:?}");
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(what()))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(sys(what()))
}

/// `pivot_root(".", ".")` stacks the old root under the new one; detaching it leaves only
/// the new root (pivot_root(2), "NOTES"). The root is then made read-only.
fn pivot(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(io(format!("entering {root:?}")))?;
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(io("entering the new root"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("making the root read-only"))
}
