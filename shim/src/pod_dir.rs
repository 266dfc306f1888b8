//! A pod's host state directory, `<state_dir>/<sandbox id>/`:
//!
//! ```text
//! shared/                 virtio-fs export (a shared-propagation mount of its own)
//!   <container id>/rootfs   the container's rootfs, mounted here on the host
//!   <container id>/mounts/  bind-mount sources shared with the guest
//! vsock.sock, vsock.sock_<port>, vhost-vsock.sock, virtiofsd.sock
//! pod.json                what `delete` needs to clean up after a dead shim
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use husk_protocol::ROOTFS_DIR;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::mounts::{self, MountError};

/// Unix socket paths must fit in `sun_path`, including the `_<port>` suffix of guest→host
/// connections.
const MAX_SOCKET_PATH: usize = 100;

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
    #[error("writing {path:?}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a later `delete` needs to find and stop a crashed pod's processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    pub sandbox_id: String,
    /// `(role, pid)` of the VMM and its helpers.
    pub processes: Vec<(String, u32)>,
    /// The shim's ttrpc socket.
    pub shim_socket: PathBuf,
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

    fn record_path(&self) -> PathBuf {
        self.root.join("pod.json")
    }

    /// Creates the directory and the shared mount. A leftover from a crashed pod of the same
    /// id is cleaned up first.
    pub fn create(&self) -> Result<(), PodDirError> {
        if self.vsock_uds().as_os_str().len() + "_4294967295".len() > MAX_SOCKET_PATH {
            return Err(PodDirError::PathTooLong {
                path: self.root.clone(),
            });
        }
        if self.root.exists() {
            self.destroy()?;
        }
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
        create(&self.root)?;
        create(&self.shared())?;
        mounts::make_shared_mountpoint(&self.shared())?;
        Ok(())
    }

    pub fn write_record(&self, record: &PodRecord) -> Result<(), PodDirError> {
        let path = self.record_path();
        let text = serde_json::to_vec(record).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| PodDirError::Record { path, source })
    }

    pub fn read_record(&self) -> Option<PodRecord> {
        serde_json::from_slice(&std::fs::read(self.record_path()).ok()?).ok()
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

    #[test]
    fn record_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let d = PodDir::new(t.path(), "p");
        std::fs::create_dir_all(d.root()).unwrap();
        let r = PodRecord {
            sandbox_id: "p".into(),
            processes: vec![("qemu".into(), 42)],
            shim_socket: "/s".into(),
        };
        d.write_record(&r).unwrap();
        assert_eq!(d.read_record(), Some(r));
    }
}
