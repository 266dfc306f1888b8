//! Path walks that cannot leave a directory. Every host-side operation on a pod's state
//! (creating mount points, removing a container's directory) resolves its path from a
//! descriptor of the directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)`: no `..` out of it, no symlink anywhere on the way, no crossing into
//! another mount. Mounts are then made on `/proc/self/fd/<fd>` of the opened mount point,
//! so nothing can swap the path between the check and the mount.
//!
//! The pod layout (see `pod_dir`) already keeps these directories out of the guest's
//! reach; this is the second wall, should a future change ever expose one of them.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use thiserror::Error;

/// The pod's state directories are shallow (`<container>/mounts/<n>-<name>`); anything
/// deeper was not made by the shim.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Error)]
pub enum BeneathError {
    #[error("opening {path:?}: {errno}")]
    OpenRoot { path: PathBuf, errno: Errno },
    #[error("{relative:?} under {root:?} is not a plain path (absolute, '..' or empty): refused")]
    NotRelative { root: PathBuf, relative: PathBuf },
    #[error(
        "{path:?} leaves {root:?}, crosses a mount or is a symlink ({errno}): refused; something replaced a path the shim made"
    )]
    Resolve {
        root: PathBuf,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{op} {path:?} under {root:?}: {errno}")]
    Io {
        op: &'static str,
        root: PathBuf,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{path:?} under {root:?} is nested more than {MAX_DEPTH} levels deep: refused")]
    TooDeep { root: PathBuf, path: PathBuf },
}

/// A directory that walks from it cannot leave.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// The kind of mount point to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    Directory,
    File,
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful open call and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Beneath {
    /// Opens `path` itself; it must be a real directory, not a symlink.
    pub fn open(path: &Path) -> Result<Self, BeneathError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|errno| {
            BeneathError::OpenRoot {
                path: path.to_path_buf(),
                errno,
            }
        })?;
        Ok(Self {
            root: owned(fd),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_relative(&self, relative: &Path) -> Result<(), BeneathError> {
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return Err(BeneathError::NotRelative {
                root: self.path.clone(),
                relative: relative.to_path_buf(),
            });
        }
        if relative.components().count() > MAX_DEPTH {
            return Err(BeneathError::TooDeep {
                root: self.path.clone(),
                path: relative.to_path_buf(),
            });
        }
        Ok(())
    }

    fn open_at(&self, relative: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        open_beneath(self.root.as_raw_fd(), relative, flags, mode)
    }

    fn resolve_error(&self, relative: &Path, errno: Errno) -> BeneathError {
        match errno {
            Errno::EXDEV | Errno::ELOOP | Errno::ENOTDIR => BeneathError::Resolve {
                root: self.path.clone(),
                path: relative.to_path_buf(),
                errno,
            },
            errno => BeneathError::Io {
                op: "opening",
                root: self.path.clone(),
                path: relative.to_path_buf(),
                errno,
            },
        }
    }

    /// Creates `relative` as a mount point (each missing parent as a directory, mode 0700)
    /// and returns descriptors of it and of its parent. Each step works from the descriptor
    /// of the directory above it, so nothing can be swapped in between.
    pub fn mount_point(
        &self,
        relative: &Path,
        kind: MountPoint,
    ) -> Result<MountTarget, BeneathError> {
        self.check_relative(relative)?;
        let components: Vec<&OsStr> = relative.iter().collect();
        let last = components.len().saturating_sub(1);
        let mut walked = PathBuf::new();
        let mut parent: Option<OwnedFd> = None;
        let mut dir: Option<OwnedFd> = None;
        for (i, name) in components.iter().enumerate() {
            walked.push(name);
            let at = dir
                .as_ref()
                .map_or(self.root.as_raw_fd(), |d| d.as_raw_fd());
            let io = |op, errno| BeneathError::Io {
                op,
                root: self.path.clone(),
                path: walked.clone(),
                errno,
            };
            let want_file = i == last && kind == MountPoint::File;
            if want_file {
                let create = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
                match open_beneath(at, *name, create, Mode::from_bits_truncate(0o600)) {
                    // Existing or new: the O_PATH open below checks what it is.
                    Ok(_) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(self.resolve_error(&walked, errno)),
                }
            } else {
                match mkdirat(Some(at), *name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(io("creating", errno)),
                }
            }
            let flags = if want_file {
                OFlag::O_PATH
            } else {
                OFlag::O_PATH | OFlag::O_DIRECTORY
            };
            let fd = open_beneath(at, *name, flags, Mode::empty())
                .map_err(|e| self.resolve_error(&walked, e))?;
            // With O_PATH | O_NOFOLLOW a trailing symlink opens as itself: refuse it here.
            match file_type(&fd) {
                Some(libc::S_IFLNK) => return Err(self.resolve_error(&walked, Errno::ELOOP)),
                Some(libc::S_IFREG) if want_file => {}
                _ if want_file => return Err(io("using as a file mount point", Errno::EINVAL)),
                _ => {}
            }
            parent = dir.replace(fd);
        }
        let not_plain = || BeneathError::NotRelative {
            root: self.path.clone(),
            relative: relative.to_path_buf(),
        };
        let point = dir.ok_or_else(not_plain)?;
        let parent = match parent {
            Some(p) => p,
            None => nix::unistd::dup(self.root.as_raw_fd())
                .map(owned)
                .map_err(|errno| BeneathError::Io {
                    op: "duplicating",
                    root: self.path.clone(),
                    path: PathBuf::new(),
                    errno,
                })?,
        };
        let name = relative.file_name().ok_or_else(not_plain)?.to_os_string();
        Ok(MountTarget {
            point,
            parent,
            name,
        })
    }

    /// Removes `relative` and everything below it, without following symlinks or entering
    /// another mount: a mount still in place fails the removal rather than being emptied.
    /// A missing `relative` is success.
    pub fn remove_tree(&self, relative: &Path) -> Result<(), BeneathError> {
        self.check_relative(relative)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        match self.open_at(relative, flags, Mode::empty()) {
            Ok(dir) => self.empty_dir(dir, relative, 1)?,
            Err(Errno::ENOENT) => return Ok(()),
            // Not a directory (a file mount point): unlink it below.
            Err(Errno::ENOTDIR) => {}
            Err(errno) => return Err(self.resolve_error(relative, errno)),
        }
        self.unlink(relative)
    }

    fn unlink(&self, relative: &Path) -> Result<(), BeneathError> {
        // The parent is walked by openat2 again, so the unlink happens in a directory that
        // is known to lie beneath the root.
        let (parent_fd, name) = match (relative.parent(), relative.file_name()) {
            (Some(p), Some(n)) if !p.as_os_str().is_empty() => {
                let fd = self
                    .open_at(p, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(|e| self.resolve_error(p, e))?;
                (Some(fd), n)
            }
            (_, Some(n)) => (None, n),
            _ => {
                return Err(BeneathError::NotRelative {
                    root: self.path.clone(),
                    relative: relative.to_path_buf(),
                });
            }
        };
        let dirfd = parent_fd
            .as_ref()
            .map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
        unlink_entry(dirfd, name).map_err(|errno| BeneathError::Io {
            op: "removing",
            root: self.path.clone(),
            path: relative.to_path_buf(),
            errno,
        })
    }

    fn empty_dir(&self, dir: OwnedFd, relative: &Path, depth: usize) -> Result<(), BeneathError> {
        if depth > MAX_DEPTH {
            return Err(BeneathError::TooDeep {
                root: self.path.clone(),
                path: relative.to_path_buf(),
            });
        }
        let io = |op, errno| BeneathError::Io {
            op,
            root: self.path.clone(),
            path: relative.to_path_buf(),
            errno,
        };
        // `Dir` owns the descriptor from here on (and closes it on error too).
        let mut listing = Dir::from_fd(dir.into_raw_fd()).map_err(|e| io("listing", e))?;
        let mut children = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| io("listing", e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            children.push((PathBuf::from(name), entry.file_type()));
        }
        for (name, kind) in children {
            let child = relative.join(&name);
            if kind == Some(Type::Directory) || kind.is_none() {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
                match self.open_at(&child, flags, Mode::empty()) {
                    Ok(fd) => self.empty_dir(fd, &child, depth + 1)?,
                    Err(Errno::ENOTDIR) => {}
                    Err(errno) => return Err(self.resolve_error(&child, errno)),
                }
            }
            self.unlink(&child)?;
        }
        Ok(())
    }
}

/// `openat2` of `relative` below `dirfd` with husk's resolve rules.
fn open_beneath<P: ?Sized + nix::NixPath>(
    dirfd: std::os::fd::RawFd,
    relative: &P,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(resolve_flags());
    openat2(dirfd, relative, how).map(owned)
}

/// The `S_IFMT` bits of what `fd` refers to.
fn file_type(fd: &OwnedFd) -> Option<libc::mode_t> {
    nix::sys::stat::fstat(fd.as_raw_fd())
        .ok()
        .map(|st| st.st_mode & libc::S_IFMT)
}

/// Removes a directory entry, whatever its kind (an empty directory or anything else).
fn unlink_entry(dirfd: std::os::fd::RawFd, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(Some(dirfd), name, UnlinkatFlags::RemoveDir) {
        Err(Errno::ENOTDIR) => unlinkat(Some(dirfd), name, UnlinkatFlags::NoRemoveDir),
        other => other,
    }
}

/// A checked mount point, held open.
#[derive(Debug)]
pub struct MountTarget {
    point: OwnedFd,
    parent: OwnedFd,
    name: std::ffi::OsString,
}

impl MountTarget {
    /// What `mount(2)` is given: the kernel resolves it to the checked mount point itself.
    pub fn path(&self) -> PathBuf {
        fd_path(&self.point)
    }

    /// The mount now on top of the mount point, for remounts and propagation changes,
    /// which act on a mount's root: the checked parent, then the name, whose dentry is a
    /// mount point by then and cannot be renamed or replaced.
    pub fn top(&self) -> PathBuf {
        fd_path(&self.parent).join(&self.name)
    }
}

/// The path through which the kernel resolves `fd` itself.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests;
