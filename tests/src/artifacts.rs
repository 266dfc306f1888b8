//! The husk build artifacts the tests run against (`cargo xtask build` writes them to
//! `target/husk/`; `cargo xtask test` passes that directory as `HUSK_ARTIFACTS`).

use std::path::{Path, PathBuf};

/// Names the artifacts directory.
pub const ARTIFACTS_ENV: &str = "HUSK_ARTIFACTS";
/// The shim binary containerd looks up on `PATH` for [`HUSK_RUNTIME`].
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";
/// containerd runtime type served by the husk shim.
pub const HUSK_RUNTIME: &str = "io.containerd.husk.v2";
/// containerd's runc runtime type (used to test the harness itself).
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// Errors locating the artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// `HUSK_ARTIFACTS` is not set.
    #[error(
        "{ARTIFACTS_ENV} is not set: run the tests with `cargo xtask test`, or run \
         `cargo xtask build` and set {ARTIFACTS_ENV}=<repo>/target/husk"
    )]
    NotSet,
    /// It is relative; containerd and the shim run elsewhere.
    #[error("{ARTIFACTS_ENV}={0} must be an absolute path")]
    Relative(PathBuf),
    /// Some files are missing.
    #[error("{dir} lacks {missing:?}: run `cargo xtask build` (it builds all husk artifacts)")]
    Incomplete {
        /// The artifacts directory.
        dir: PathBuf,
        /// File names that are missing.
        missing: Vec<&'static str>,
    },
}

/// A directory holding the husk artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    dir: PathBuf,
}

impl Artifacts {
    /// Artifacts in `dir` (not checked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Artifacts named by `HUSK_ARTIFACTS`, checked to be complete.
    pub fn from_env() -> Result<Self, ArtifactsError> {
        let a = Self::from_env_unchecked()?;
        a.check_complete()?;
        Ok(a)
    }

    /// The directory named by `HUSK_ARTIFACTS`, without checking its contents (for
    /// tests that need only some files, e.g. just the kernel).
    pub fn from_env_unchecked() -> Result<Self, ArtifactsError> {
        let dir = std::env::var_os(ARTIFACTS_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .ok_or(ArtifactsError::NotSet)?;
        if !dir.is_absolute() {
            return Err(ArtifactsError::Relative(dir));
        }
        Ok(Self { dir })
    }

    /// Fails naming every missing file.
    pub fn check_complete(&self) -> Result<(), ArtifactsError> {
        let missing: Vec<&'static str> = Self::FILES
            .iter()
            .copied()
            .filter(|f| !self.dir.join(f).is_file())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ArtifactsError::Incomplete {
                dir: self.dir.clone(),
                missing,
            })
        }
    }

    /// Every file a complete artifacts directory has.
    pub const FILES: [&'static str; 6] = [
        SHIM_BINARY,
        "vmlinuz",
        "vmlinux",
        "initrd.img",
        "virtiofsd",
        "config.toml",
    ];

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `containerd-shim-husk-v2`.
    pub fn shim(&self) -> PathBuf {
        self.dir.join(SHIM_BINARY)
    }

    /// The guest kernel (bzImage).
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The uncompressed guest kernel (ELF).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The guest initramfs (agent as `/init`).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }

    /// The virtio-fs daemon.
    pub fn virtiofsd(&self) -> PathBuf {
        self.dir.join("virtiofsd")
    }

    /// The husk config pointing at these artifacts.
    /// The tests' static inotify watcher (`tests/inotify-probe`), which tests bind-mount
    /// into containers; `cargo xtask build` puts it here.
    pub fn inotify_probe(&self) -> PathBuf {
        self.dir.join("husk-inotify-probe")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
}
