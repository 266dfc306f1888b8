//! A container's files on the host side of the pod share: its rootfs (containerd's mounts,
//! or a bind of the bundle's `root.path`) and its bind-mount sources, made below the pod's
//! host-only directory through [`Beneath`] so no path the shim uses can be redirected.
//! The work is blocking (mount(2), directory walks): callers run it off the async runtime.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::beneath::{Beneath, MountPoint, MountTarget};
use crate::guest_spec::HostBind;
use crate::mounts::{self, MountError, MountSpec};
use crate::pod_dir::{PodDir, PodDirError};

#[derive(Debug, Error)]
pub enum ContainerFilesError {
    #[error("preparing the container's directory in the pod share: {0}")]
    Dir(#[from] PodDirError),
    #[error("mounting the container's rootfs: {0}")]
    Rootfs(#[source] Box<MountError>),
    #[error("sharing the bind mount of {source_path:?} with the guest: {source}")]
    Bind {
        source_path: PathBuf,
        #[source]
        source: Box<MountError>,
    },
}

/// Where a container's rootfs comes from.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// containerd's rootfs mounts (an overlay from the snapshotter, …), in order.
    Mounts(Vec<MountSpec>),
    /// No mounts in the request: the bundle's `root.path`, bind-mounted.
    Bind(PathBuf),
}

/// Mounts the rootfs and the bind-mount sources of container `id` below the pod's host
/// directory, where the guest's read-only view picks them up.
pub fn prepare(
    dir: &PodDir,
    id: &str,
    rootfs: &RootfsSource,
    binds: &[HostBind],
) -> Result<(), ContainerFilesError> {
    let host = dir.host_beneath()?;
    let target = mount_point(&host, &PodDir::rootfs(id), MountPoint::Directory)?;
    match rootfs {
        RootfsSource::Bind(source) => {
            mounts::bind(source, &target.path(), &target.top(), false, true)
                .map_err(|e| ContainerFilesError::Rootfs(Box::new(e)))?
        }
        RootfsSource::Mounts(layers) => {
            for m in layers {
                mounts::mount_one(m, &target.path(), &target.top())
                    .map_err(|e| ContainerFilesError::Rootfs(Box::new(e)))?;
            }
        }
    }
    for b in binds {
        let kind = if b.source.is_dir() {
            MountPoint::Directory
        } else {
            MountPoint::File
        };
        let relative = PodDir::container(id).join(&b.relative_target);
        let target = mount_point(&host, &relative, kind)?;
        let (path, top) = (target.path(), target.top());
        mounts::bind(&b.source, &path, &top, b.readonly, b.recursive).map_err(|source| {
            ContainerFilesError::Bind {
                source_path: b.source.clone(),
                source: Box::new(source),
            }
        })?;
    }
    Ok(())
}

fn mount_point(
    host: &Beneath,
    relative: &Path,
    kind: MountPoint,
) -> Result<MountTarget, ContainerFilesError> {
    host.mount_point(relative, kind)
        .map_err(|e| ContainerFilesError::Dir(PodDirError::Beneath(e)))
}
