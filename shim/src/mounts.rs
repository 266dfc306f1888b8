//! Host mounts: a container's rootfs (as containerd describes it) and bind mounts into the
//! pod's shared directory, whose mount is `shared` so that mounts made after virtiofsd
//! started still propagate into virtiofsd's own mount namespace.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use thiserror::Error;

/// The kernel takes at most one page of mount data.
const MAX_MOUNT_DATA: usize = 4095;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mounting {fstype} {from:?} on {target:?} (options {options:?}): {errno}")]
    Mount {
        fstype: String,
        from: String,
        target: PathBuf,
        options: String,
        errno: nix::Error,
    },
    #[error(
        "mount options for {target:?} are {len} bytes; the kernel accepts at most {MAX_MOUNT_DATA}"
    )]
    DataTooLong { target: PathBuf, len: usize },
    #[error("unmounting {target:?}: {errno}")]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("preparing mount point {path:?}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One mount as containerd sends it in CreateTaskRequest.rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

/// Splits containerd/fstab-style options into mount flags, a propagation change and fs data.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut p = ParsedOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            other => {
                if let Some(prop) = propagation(other) {
                    p.propagation = prop;
                } else {
                    p.data.push(other.to_string());
                }
                continue;
            }
        };
        p.flags.insert(set);
        p.flags.remove(clear);
    }
    p
}

fn propagation(o: &str) -> Option<MsFlags> {
    Some(match o {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Mounts `m` on `target` (which must exist). Read-only bind mounts get the remount the
/// kernel needs for `ro` to apply, and propagation options their change, both on `top`:
/// the path that reaches the new mount once it is in place (the same as `target` for a
/// plain path; see `beneath::MountTarget`).
pub fn mount_one(m: &MountSpec, target: &Path, top: &Path) -> Result<(), MountError> {
    let p = parse_options(&m.options);
    let data = p.data.join(",");
    if data.len() > MAX_MOUNT_DATA {
        return Err(MountError::DataTooLong {
            target: target.to_path_buf(),
            len: data.len(),
        });
    }
    let fail = |errno| MountError::Mount {
        fstype: m.fstype.clone(),
        from: m.source.clone(),
        target: target.to_path_buf(),
        options: m.options.join(","),
        errno,
    };
    let is_bind = p.flags.contains(MsFlags::MS_BIND) || m.fstype == "bind";
    let flags = if m.fstype == "bind" {
        p.flags | MsFlags::MS_BIND
    } else {
        p.flags
    };
    let fstype = (!is_bind).then_some(m.fstype.as_str());
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(fail)?;
    if is_bind && flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (flags & !MsFlags::MS_REC);
        mount(None::<&str>, top, None::<&str>, remount, None::<&str>).map_err(fail)?;
    }
    if !p.propagation.is_empty() {
        mount(None::<&str>, top, None::<&str>, p.propagation, None::<&str>).map_err(fail)?;
    }
    Ok(())
}

/// Bind-mounts `source` (file or directory) on the existing mount point `target` (`top`
/// as for [`mount_one`]).
pub fn bind(
    source: &Path,
    target: &Path,
    top: &Path,
    readonly: bool,
    recursive: bool,
) -> Result<(), MountError> {
    let mut options = vec![if recursive { "rbind" } else { "bind" }.to_string()];
    if readonly {
        options.push("ro".into());
    }
    mount_one(
        &MountSpec {
            fstype: "bind".into(),
            source: source.display().to_string(),
            options,
        },
        target,
        top,
    )
}

/// Makes `dir` a mount point of its own with shared propagation.
pub fn make_shared_mountpoint(dir: &Path) -> Result<(), MountError> {
    let fail = |errno| MountError::Mount {
        fstype: "bind".into(),
        from: dir.display().to_string(),
        target: dir.to_path_buf(),
        options: "bind,shared".into(),
        errno,
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(fail)?;
    // Private first: detach from whatever peer group the parent had, then start our own.
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail)?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(fail)
}

/// Moves the mount at `from` to `to` (`MS_MOVE`).
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|errno| {
        MountError::Mount {
            fstype: "move".into(),
            from: from.display().to_string(),
            target: to.to_path_buf(),
            options: String::new(),
            errno,
        }
    })
}

/// Makes the mount at `target`, and every mount below it, private (`rprivate`).
pub fn make_private(target: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        fstype: "bind".into(),
        from: String::new(),
        target: target.to_path_buf(),
        options: "rprivate".into(),
        errno,
    })
}

/// Mounts `view` as a read-only bind of `source` that receives, one way, every mount made
/// below `source` later (`source` must be a shared mount): the view is a slave of it.
/// Mounts propagated into the view keep their own flags; only the view's own directory
/// tree is read-only.
pub fn readonly_view(source: &Path, view: &Path) -> Result<(), MountError> {
    let fail = |errno| MountError::Mount {
        fstype: "bind".into(),
        from: source.display().to_string(),
        target: view.to_path_buf(),
        options: "bind,ro,nosuid,nodev,slave".into(),
        errno,
    };
    let none = None::<&str>;
    mount(Some(source), view, none, MsFlags::MS_BIND, none).map_err(fail)?;
    let readonly = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(none, view, none, readonly, none).map_err(fail)?;
    mount(none, view, none, MsFlags::MS_SLAVE, none).map_err(fail)
}

/// Lazily unmounts everything stacked on `target`; "not mounted" is success. A symlink
/// at `target` is not followed (`UMOUNT_NOFOLLOW`).
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    // Stacked mounts (a rootfs made of several mounts) come off one per call.
    for _ in 0..64 {
        match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(MountError::Unmount {
                    target: target.to_path_buf(),
                    errno,
                });
            }
        }
    }
    Ok(())
}

/// The mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mount_points_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// True if something is mounted on `path` itself.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points_below(path).iter().any(|p| p == path)
}

/// Unmounts all mount points at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) -> Result<(), MountError> {
    for p in mount_points_below(dir) {
        unmount_all(&p)?;
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_flags_from_data() {
        let p = parse_options(&opts(&[
            "ro",
            "nosuid",
            "lowerdir=/a:/b",
            "upperdir=/u",
            "workdir=/w",
            "index=off",
        ]));
        assert_eq!(p.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(
            p.data,
            ["lowerdir=/a:/b", "upperdir=/u", "workdir=/w", "index=off"]
        );
    }

    #[test]
    fn later_options_win_and_propagation_is_separate() {
        let p = parse_options(&opts(&["ro", "rw", "rbind", "rprivate"]));
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(p.data.is_empty());
    }

    #[test]
    fn overlong_data_is_refused_before_mounting() {
        let d = tempfile::tempdir().unwrap();
        let m = MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", "x".repeat(5000))],
        };
        assert!(matches!(
            mount_one(&m, d.path(), d.path()),
            Err(MountError::DataTooLong { .. })
        ));
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
