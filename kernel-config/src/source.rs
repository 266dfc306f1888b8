//! The kernel source: Debian's `linux-source-6.1` package.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::exec::{ExecError, run_captured};

/// The Debian package providing the source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Where that package puts the tarball.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// `dpkg-query` answers from a local database; anything slower is stuck.
const DPKG_QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors locating the kernel source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `dpkg-query` failed (package unknown, dpkg missing).
    #[error("querying the version of {SOURCE_PACKAGE}: {0}")]
    Query(#[from] ExecError),
    /// The package is known but not installed.
    #[error("{SOURCE_PACKAGE} is not installed (dpkg status {status:?}); run `cargo xtask deps`")]
    NotInstalled {
        /// The `db:Status-Abbrev` dpkg reported.
        status: String,
    },
    /// The package is installed but the tarball is gone.
    #[error(
        "{SOURCE_PACKAGE} is installed but {0} is missing; reinstall it with `apt-get install --reinstall {SOURCE_PACKAGE}`"
    )]
    MissingTarball(PathBuf),
}

/// An installed kernel source tarball and its package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// The `.tar.xz` to extract.
    pub tarball: PathBuf,
    /// The Debian package version, e.g. `6.1.192-3` (part of the cache key).
    pub version: String,
}

impl KernelSource {
    /// Finds the installed `linux-source-6.1` via `dpkg-query`.
    pub fn detect() -> Result<Self, SourceError> {
        let out = run_captured(
            Command::new("dpkg-query").args([
                "-W",
                "-f=${db:Status-Abbrev}\t${Version}",
                SOURCE_PACKAGE,
            ]),
            DPKG_QUERY_TIMEOUT,
        )?;
        let (status, version) = out.split_once('\t').unwrap_or((out.as_str(), ""));
        if !status.starts_with("ii") || version.is_empty() {
            return Err(SourceError::NotInstalled {
                status: status.trim().to_owned(),
            });
        }
        let tarball = PathBuf::from(SOURCE_TARBALL);
        if !tarball.is_file() {
            return Err(SourceError::MissingTarball(tarball));
        }
        Ok(Self {
            tarball,
            version: version.trim().to_owned(),
        })
    }
}
