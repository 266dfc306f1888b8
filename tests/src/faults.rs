//! Fault fixtures: inputs that make husk fail in controlled ways.

use std::fs;
use std::path::{Path, PathBuf};

use husk_rootfs::InitramfsError;

use crate::image::{BUSYBOX, busybox_initramfs};

/// The sleeper's `/init`: a shell script that never starts an agent.
const SLEEPER_INIT: &str = "#!/bin/busybox sh\n\
# husk test fixture: a guest whose agent never answers.\n\
exec /bin/busybox sleep 2147483647\n";

/// Errors building fault fixtures.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// Reading busybox or writing the image failed.
    #[error("building the sleeper initrd {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Encoding the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
}

/// Writes an initramfs whose `/init` boots fine but only sleeps: no agent ever listens
/// on vsock, so the shim's connect must time out and clean up.
pub fn write_sleeper_initrd(path: &Path) -> Result<(), FaultError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| FaultError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    busybox_initramfs(SLEEPER_INIT)
        .map_err(|source| FaultError::Io {
            path: PathBuf::from(BUSYBOX),
            source,
        })?
        .write_file(path)?;
    Ok(())
}
