//! A pod's host state directory, `<state_dir>/<sandbox id>/`, on a tmpfs mounted over
//! `<state_dir>` in the shim's private mount namespace (see `isolation`): only the shim,
//! its VMM and virtiofsd see it, and it vanishes with them.
//!
//! ```text
//! host/                   host-only: the shim mounts here (a shared-propagation mount)
//!   <container id>/rootfs   the container's rootfs as containerd describes it
//!   <container id>/mounts/  bind-mount sources shared with the guest
//! shared/                 virtio-fs export: a read-only view of host/ (a slave of it)
//! vm/                     the VM's sockets: vsock.sock, vsock.sock_<port>, virtiofsd.sock,
//!                         vhost-vsock.sock (QEMU); husk-vmm's /run, owned by its uid; with
//!                         QEMU 0711 and only the sockets QEMU connects to are its uid's
//! staging/               where rprivate binds are made before they move below host/
//! vmm-root/               empty: husk-vmm mounts its jail root here, in its own namespace
//! ```
//!
//! The guest sees `shared/` only: a read-only bind mount of `host/`, so the guest can
//! neither create nor replace anything in the directory tree the shim works in (no
//! symlink, no file where a directory belongs), while every rootfs and volume mounted
//! below `host/` propagates into the view with its own flags (a writable rootfs stays
//! writable). This is the layout Kata adopted after CVE-2020-2026. Below `host/` the shim
//! walks only with [`Beneath`], and unmounts with `UMOUNT_NOFOLLOW`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use husk_protocol::ROOTFS_DIR;
use nix::mount::{MsFlags, mount};
use thiserror::Error;

use crate::beneath::{Beneath, BeneathError};
use crate::mounts::{self, MountError};

/// Unix socket paths must fit in `sun_path`, including the `_<port>` suffix of guest→host
/// connections.
const MAX_SOCKET_PATH: usize = 100;
/// The state tmpfs holds sockets, empty mount points and little else.
/// 0711: the unprivileged VMM may pass through to its socket directory, not list or change.
const STATE_TMPFS_OPTIONS: &str = "mode=0711,size=4m,nr_inodes=4096";

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
    #[error(transparent)]
    Beneath(#[from] BeneathError),
    #[error("the worker removing container files failed")]
    Worker(#[source] tokio::task::JoinError),
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

    /// The virtio-fs export: the guest's read-only view of [`PodDir::host`].
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// Where the shim mounts container root filesystems and volumes; never exported.
    pub fn host(&self) -> PathBuf {
        self.root.join("host")
    }

    /// Opens [`PodDir::host`] for walks that cannot leave it.
    pub fn host_beneath(&self) -> Result<Beneath, PodDirError> {
        Ok(Beneath::open(&self.host())?)
    }

    /// A container's directory, relative to [`PodDir::host`].
    pub fn container(container_id: &str) -> PathBuf {
        PathBuf::from(container_id)
    }

    /// A container's rootfs mount point, relative to [`PodDir::host`].
    pub fn rootfs(container_id: &str) -> PathBuf {
        Self::container(container_id).join(ROOTFS_DIR)
    }

    /// Where `rprivate` binds are made before they move into [`PodDir::host`]: on the
    /// state tmpfs, whose mounts propagate nowhere.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// A Sandbox API pod's files (`crate::sandbox::pod_files`), on the state tmpfs.
    pub fn pod_files(&self) -> PathBuf {
        self.root.join("pod-files")
    }

    pub fn vsock_uds(&self) -> PathBuf {
        self.root.join("vm/vsock.sock")
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
        // Traversable (not listable) for the VMM's uid on its way to vm/.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| PodDirError::Create {
                path: self.root.clone(),
                source,
            },
        )?;
        create(&self.host())?;
        create(&self.shared())?;
        create(&self.root.join("vm"))?;
        create(&self.staging())?;
        mounts::make_shared_mountpoint(&self.host())?;
        mounts::readonly_view(&self.host(), &self.shared())?;
        Ok(())
    }

    /// Unmounts everything a container had in the share and removes its directory.
    pub fn remove_container(&self, container_id: &str) -> Result<(), PodDirError> {
        let relative = Self::container(container_id);
        // Unmounting below host/ propagates to the view; the view is swept too in case a
        // propagated mount outlived its source.
        mounts::unmount_below(&self.host().join(&relative))?;
        mounts::unmount_below(&self.shared().join(&relative))?;
        self.host_beneath()?.remove_tree(&relative)?;
        Ok(())
    }

    /// Unmounts every mount under the pod directory and removes it.
    pub fn destroy(&self) -> Result<(), PodDirError> {
        mounts::unmount_below(&self.root)?;
        let Some((state_dir, name)) = self.root.parent().zip(self.root.file_name()) else {
            return Ok(());
        };
        match Beneath::open(state_dir) {
            Ok(state) => Ok(state.remove_tree(Path::new(name))?),
            Err(BeneathError::OpenRoot {
                errno: nix::Error::ENOENT,
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = PodDir::new(Path::new("/run/husk"), "pod1");
        assert_eq!(d.host(), Path::new("/run/husk/pod1/host"));
        assert_eq!(d.shared(), Path::new("/run/husk/pod1/shared"));
        assert_eq!(PodDir::rootfs("c1"), Path::new("c1/rootfs"));
        assert_eq!(d.vsock_uds(), Path::new("/run/husk/pod1/vm/vsock.sock"));
    }

    #[test]
    fn refuses_paths_too_long_for_sockets() {
        let long = "x".repeat(120);
        let d = PodDir::new(Path::new("/run/husk"), &long);
        assert!(matches!(d.create(), Err(PodDirError::PathTooLong { .. })));
    }
}
