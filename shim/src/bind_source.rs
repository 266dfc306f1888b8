//! A bind-mount source, opened once without following any symlink, and mounted from that
//! descriptor.
//!
//! containerd's CRI resolves every symlink of a hostPath (and kubelet every subPath)
//! before the shim hears of it, so a symlink on the way when the shim mounts was put there
//! afterwards. In a pod's writable volume that is the guest's doing: it can replace a
//! directory another container is about to bind (`subPath`) with a link to `/`, between
//! CreateContainer and StartContainer. Following it would hand the guest the host's
//! root. So the source is opened with `openat2(RESOLVE_NO_SYMLINKS)` and the bind is
//! made from `/proc/self/fd/<fd>`: what was checked is what is mounted.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BindSourceError {
    #[error(
        "bind mount source {path:?} passes through the symlink {link:?}; husk mounts only \
         resolved paths (CRI resolves hostPaths; resolve it before passing it with ctr), \
         since a pod can replace a directory in its writable volume with a link"
    )]
    Symlink { path: PathBuf, link: PathBuf },
    #[error("bind mount source {path:?} does not exist on the host")]
    Missing { path: PathBuf },
    #[error("bind mount source {path:?} must be an absolute path without '.' or '..'")]
    NotClean { path: PathBuf },
    #[error("opening bind mount source {path:?}: {errno}")]
    Open { path: PathBuf, errno: Errno },
}

/// An opened source (`O_PATH`).
#[derive(Debug)]
pub struct BindSource {
    fd: OwnedFd,
    is_dir: bool,
}

impl BindSource {
    /// Opens `path`, refusing any symlink in it.
    pub fn open(path: &Path) -> Result<Self, BindSourceError> {
        let clean = path.is_absolute()
            && path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !clean {
            return Err(BindSourceError::NotClean {
                path: path.to_path_buf(),
            });
        }
        let how = OpenHow::new()
            // No O_NOFOLLOW: with O_PATH it would open a trailing link itself instead of
            // failing with ELOOP.
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let raw = openat2(libc::AT_FDCWD, path, how).map_err(|errno| match errno {
            Errno::ELOOP => BindSourceError::Symlink {
                path: path.to_path_buf(),
                link: first_symlink(path).unwrap_or_else(|| path.to_path_buf()),
            },
            Errno::ENOENT => BindSourceError::Missing {
                path: path.to_path_buf(),
            },
            errno => BindSourceError::Open {
                path: path.to_path_buf(),
                errno,
            },
        })?;
        // SAFETY: `raw` was just returned by a successful openat2 and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let kind = nix::sys::stat::fstat(fd.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT)
            .map_err(|errno| BindSourceError::Open {
                path: path.to_path_buf(),
                errno,
            })?;
        if kind == libc::S_IFLNK {
            return Err(BindSourceError::Symlink {
                path: path.to_path_buf(),
                link: path.to_path_buf(),
            });
        }
        Ok(Self {
            fd,
            is_dir: kind == libc::S_IFDIR,
        })
    }

    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    /// The path `mount(2)` is given: the kernel resolves it to the opened file itself.
    pub fn mount_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// containerd's own files for the pod (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`,
/// `/dev/shm`): below `io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/` of containerd's
/// root or state directory, which an operator may have moved behind a symlink (and which
/// containerd does not resolve). The pod cannot write above them.
pub fn is_containerd_pod_file(path: &Path, sandbox_id: &str) -> bool {
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    names
        .windows(3)
        .any(|w| w[0] == "io.containerd.grpc.v1.cri" && w[1] == "sandboxes" && w[2] == sandbox_id)
}

/// The first component of `path` that is a symlink (for the error message only).
fn first_symlink(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn opens_real_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let dir = BindSource::open(d.path()).unwrap();
        assert!(dir.is_dir());
        let file = BindSource::open(&d.path().join("f")).unwrap();
        assert!(!file.is_dir());
        assert!(std::fs::metadata(file.mount_path()).unwrap().is_file());
    }

    #[test]
    fn refuses_a_symlink_anywhere_on_the_way() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        symlink("/", d.path().join("escape")).unwrap();
        symlink(d.path().join("real"), d.path().join("link")).unwrap();
        for (path, link) in [
            (d.path().join("escape"), d.path().join("escape")),
            (d.path().join("escape/etc"), d.path().join("escape")),
            (d.path().join("link"), d.path().join("link")),
        ] {
            match BindSource::open(&path) {
                Err(BindSourceError::Symlink { link: l, .. }) => assert_eq!(l, link),
                other => panic!("{path:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn recognises_containerds_own_pod_files() {
        let hosts = Path::new("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/hosts");
        assert!(is_containerd_pod_file(hosts, "p1"));
        assert!(!is_containerd_pod_file(hosts, "p2"));
        assert!(!is_containerd_pod_file(
            Path::new("/var/lib/kubelet/pods/u/volumes/x"),
            "p1"
        ));
    }

    #[test]
    fn names_missing_and_unclean_paths() {
        assert!(matches!(
            BindSource::open(Path::new("/nonexistent/husk")),
            Err(BindSourceError::Missing { .. })
        ));
        for p in ["relative", "/tmp/../etc"] {
            assert!(
                matches!(
                    BindSource::open(Path::new(p)),
                    Err(BindSourceError::NotClean { .. })
                ),
                "{p}"
            );
        }
    }
}
