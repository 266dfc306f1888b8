//! A container's files on the host side of the pod share: its rootfs (containerd's mounts,
//! or a bind of the bundle's `root.path`) and its bind-mount sources, made below the pod's
//! host-only directory through [`Beneath`] so no path the shim uses can be redirected.
//! The work is blocking (mount(2), directory walks): callers run it off the async runtime.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::beneath::{Beneath, MountPoint, MountTarget};
use crate::bind_source::{self, BindSource, BindSourceError};
use crate::guest_spec::HostBind;
use crate::mounts::{self, MountError, MountSpec};
use crate::pod_dir::{PodDir, PodDirError};

#[derive(Debug, Error)]
pub enum ContainerFilesError {
    #[error("preparing the container's directory in the pod share: {0}")]
    Dir(#[from] PodDirError),
    #[error("mounting the container's rootfs: {0}")]
    Rootfs(#[source] Box<MountError>),
    #[error(transparent)]
    Source(#[from] BindSourceError),
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
    for (index, b) in binds.iter().enumerate() {
        let source = open_source(dir, b)?;
        let kind = if source.is_dir() {
            MountPoint::Directory
        } else {
            MountPoint::File
        };
        let relative = &b.share_path;
        if b.pod_level && mounts::is_mount_point(&dir.host().join(relative)) {
            // Another container of the pod mounted it already.
            continue;
        }
        let target = mount_point(&host, relative, kind)?;
        let (path, top) = (target.path(), target.top());
        let fail = |source| ContainerFilesError::Bind {
            source_path: b.source.clone(),
            source: Box::new(source),
        };
        if b.private {
            let staging = dir.staging().join(format!("{id}-{index}"));
            bind_private(b, &source, &staging, kind, &path).map_err(fail)?;
        } else {
            let from = source.mount_path();
            mounts::bind(&from, &path, &top, b.readonly, b.recursive).map_err(fail)?;
        }
    }
    Ok(())
}

/// Opens `b`'s source without following symlinks; containerd's own files for the pod are
/// resolved first (see [`bind_source::is_containerd_pod_file`]).
fn open_source(dir: &PodDir, b: &HostBind) -> Result<BindSource, BindSourceError> {
    let sandbox_id = dir
        .root()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if bind_source::is_containerd_pod_file(&b.source, sandbox_id) {
        if let Ok(resolved) = std::fs::canonicalize(&b.source) {
            return BindSource::open(&resolved);
        }
    }
    BindSource::open(&b.source)
}

/// An `rprivate` bind: made at `staging` (a private place the guest's share does not
/// reach), cut from the source's propagation there, then moved to `target`. Made in place,
/// the copies in the guest's view and in virtiofsd's namespace would already be slaves of
/// the source, and keep receiving the host's later mounts whatever became of the original.
fn bind_private(
    b: &HostBind,
    source: &BindSource,
    staging: &Path,
    kind: MountPoint,
    target: &Path,
) -> Result<(), MountError> {
    let created = match kind {
        MountPoint::Directory => std::fs::create_dir(staging),
        MountPoint::File => std::fs::File::create_new(staging).map(drop),
    };
    created.map_err(|source| MountError::MountPoint {
        path: staging.to_path_buf(),
        source,
    })?;
    let moved = mounts::bind(
        &source.mount_path(),
        staging,
        staging,
        b.readonly,
        b.recursive,
    )
    .and_then(|()| mounts::make_private(staging))
    .and_then(|()| mounts::move_mount(staging, target));
    if moved.is_err() {
        let _ = mounts::unmount_all(staging);
    }
    let _ = match kind {
        MountPoint::Directory => std::fs::remove_dir(staging),
        MountPoint::File => std::fs::remove_file(staging),
    };
    moved
}

fn mount_point(
    host: &Beneath,
    relative: &Path,
    kind: MountPoint,
) -> Result<MountTarget, ContainerFilesError> {
    host.mount_point(relative, kind)
        .map_err(|e| ContainerFilesError::Dir(PodDirError::Beneath(e)))
}
