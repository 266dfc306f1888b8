//! A pod's host state directory, `<state_dir>/<sandbox id>/`, on a tmpfs mounted over
//! `<state_dir>` in the shim's private mount namespace (see `isolation`): only the shim,
//! its VMM and virtiofsd see it, and it vanishes with them.
//!
//! ```text
//! shared/                 virtio-fs export (a shared-propagation mount of its own)
//!   <container id>/rootfs   the container's rootfs, mounted here on the host
//!   <container id>/mounts/  bind-mount sources shared with the guest
//! vsock.sock, vsock.sock_<port>, vhost-vsock.sock, virtiofsd.sock
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use husk_protocol::ROOTFS_DIR;
use nix::mount::{MsFlags, mount};
use thiserror::Error;

use crate::mounts::{self, MountError};

/// Unix socket paths must fit in `sun_path`, including the `_<port>` suffix of guest→host
/// connections.
const MAX_SOCKET_PATH: usize = 100;
/// The state tmpfs holds sockets, empty mount points and little else.
const STATE_TMPFS_OPTIONS: &str = "mode=0700,size=4m,nr_inodes=4096";

#[derive(Debug, Error)]
pub enum PodDirError {
    #[error("creating pod directory {path:?}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pod directory {path:?} is too long for Unix sockets; choose a shorter runtime.state_dir"
    )]
    PathTooLong { path: PathBuf },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("mounting the pod state tmpfs on {path:?}: {errno}")]
    StateTmpfs { path: PathBuf, errno: nix::Error },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(state_dir: &Path, sandbox_id: &str) -> Self {
        Self {
            root: state_dir.join(sandbox_id),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    pub fn container(&self, container_id: &str) -> PathBuf {
        self.shared().join(container_id)
    }

    pub fn rootfs(&self, container_id: &str) -> PathBuf {
        self.container(container_id).join(ROOTFS_DIR)
    }

    pub fn vsock_uds(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }

    /// Mounts a fresh state tmpfs over the state directory (in the shim's own mount
    /// namespace), then creates the pod directory and the shared mount in it.
    pub fn create(&self) -> Result<(), PodDirError> {
        if self.vsock_uds().as_os_str().len() + "_4294967295".len() > MAX_SOCKET_PATH {
            return Err(PodDirError::PathTooLong {
                path: self.root.clone(),
            });
        }
        let state_dir = self.root.parent().unwrap_or(Path::new("/"));
        let create = |p: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|source| PodDirError::Create {
                    path: p.to_path_buf(),
                    source,
                })
        };
        create(state_dir)?;
        mount(
            Some("husk-state"),
            state_dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(STATE_TMPFS_OPTIONS),
        )
        .map_err(|errno| PodDirError::StateTmpfs {
            path: state_dir.to_path_buf(),
            errno,
        })?;
        create(&self.root)?;
        create(&self.shared())?;
        mounts::make_shared_mountpoint(&self.shared())?;
        Ok(())
    }

    /// Unmounts everything a container had in the share and removes its directory.
    pub fn remove_container(&self, container_id: &str) -> Result<(), PodDirError> {
        let dir = self.container(container_id);
        unmount_below(&dir)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PodDirError::Create { path: dir, source }),
        }
    }

    /// Unmounts every mount under the pod directory and removes it.
    pub fn destroy(&self) -> Result<(), PodDirError> {
        unmount_below(&self.root)?;
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PodDirError::Create {
                path: self.root.clone(),
                source,
            }),
        }
    }
}

/// Unmounts all mount points at or below `dir`, deepest first.
fn unmount_below(dir: &Path) -> Result<(), MountError> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        mounts::unmount_all(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = PodDir::new(Path::new("/run/husk"), "pod1");
        assert_eq!(d.rootfs("c1"), Path::new("/run/husk/pod1/shared/c1/rootfs"));
        assert_eq!(d.vsock_uds(), Path::new("/run/husk/pod1/vsock.sock"));
    }

    #[test]
    fn refuses_paths_too_long_for_sockets() {
        let long = "x".repeat(120);
        let d = PodDir::new(Path::new("/run/husk"), &long);
        assert!(matches!(d.create(), Err(PodDirError::PathTooLong { .. })));
    }
}
