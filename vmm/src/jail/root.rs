//! The jail's namespaces and root filesystem.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, mknod};
use nix::unistd::{Gid, Uid, chown, pivot_root};

use super::{JailError, io, sys};
use husk_vmm_config::Contents;
use husk_vmm_config::JailConfig;
use husk_vmm_config::jail::SOCKET_DIR;

/// The root holds a few directories, device nodes, links and mount points; nothing is
/// written later.
const ROOT_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=64,mode=0755";

/// New mount, IPC and UTS namespaces; a new network namespace too unless the VM uses taps
/// (which live in the monitor's network namespace). An empty network namespace also
/// hides the host's abstract Unix sockets.
pub(super) fn unshare_namespaces(host_network: bool) -> Result<(), JailError> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if !host_network {
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

/// Builds the root on `jail.root` from `contents` and pivots into it.
pub(super) fn build(contents: &Contents, jail: &JailConfig) -> Result<(), JailError> {
    let root = jail.root.as_path();
    mount(
        Some("husk-jail"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )
    .map_err(sys(format!("mounting the root tmpfs on {root:?}")))?;
    let owner = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
    for device in &contents.devices {
        device_node(device, root, owner)?;
    }
    let read_only =
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for file in &contents.files {
        bind_file(&file.host, &inside(root, &file.inside), read_only)?;
    }
    for program in &contents.programs {
        let target = inside(root, &program.inside);
        make_dirs(&target)?;
        // Executable, but nothing in it gains privileges (no set-id, no devices).
        bind(
            &program.host,
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
    }
    for link in &contents.links {
        let at = inside(root, &link.inside);
        make_parent(&at)?;
        std::os::unix::fs::symlink(&link.target, &at).map_err(io(format!("creating {at:?}")))?;
    }
    let run = inside(root, Path::new(SOCKET_DIR));
    make_dirs(&run)?;
    bind(
        &jail.sockets,
        &run,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    pivot(root)
}

/// `path` (absolute, checked by [`Contents::validate`]) below `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn make_dirs(path: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io(format!("creating {path:?}")))
}

fn make_parent(path: &Path) -> Result<(), JailError> {
    match path.parent() {
        Some(parent) => make_dirs(parent),
        None => Ok(()),
    }
}

/// A node for the host device `host` (same type and numbers), usable only by the jail's ids.
fn device_node(host: &Path, root: &Path, (uid, gid): (Uid, Gid)) -> Result<(), JailError> {
    let meta = std::fs::metadata(host).map_err(io(format!("{host:?} (the jail needs it)")))?;
    if !meta.file_type().is_char_device() {
        return Err(JailError::NotADevice(host.to_path_buf()));
    }
    let rdev = meta.rdev();
    let node = inside(root, host);
    make_parent(&node)?;
    mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), rdev)
        .map_err(sys(format!("creating {node:?}")))?;
    chown(&node, Some(uid), Some(gid)).map_err(sys(format!("chown {node:?}")))
}

fn bind_file(source: &Path, target: &Path, flags: MsFlags) -> Result<(), JailError> {
    make_parent(target)?;
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
