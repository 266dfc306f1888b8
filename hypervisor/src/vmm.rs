//! The backend-neutral VM interface the shim programs against.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use slog::Logger;
use thiserror::Error;
use tokio::sync::watch;

use crate::spec::VmSpec;

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(
        "{what} {path:?} is unusable: {reason}; fix the path in the husk config (/etc/husk/config.toml) or install it (`cargo xtask install`)"
    )]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{what} {path:?} is unusable: {source}; fix the path in the husk config (/etc/husk/config.toml) or install it (`cargo xtask install`)"
    )]
    UnreadableFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid VM settings: {0}")]
    InvalidSpec(String),
    #[error("invalid VM settings: {0}")]
    LaunchFile(#[from] husk_vmm_config::ConfigError),
    #[error("hypervisor binary {name:?} {reason}; {fix}")]
    HypervisorBinary {
        name: String,
        reason: String,
        fix: &'static str,
    },
    #[error("no usable hypervisor: {0}")]
    NoBackend(String),
    #[error("creating socket {path:?}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} exited while the VM was starting ({status}){detail}")]
    EarlyExit {
        what: &'static str,
        status: String,
        detail: String,
    },
    #[error("choosing the monitor's uid: {0}")]
    VmmId(#[from] crate::vmm_ids::IdError),
}

/// How a VM ended, as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Human-readable cause, e.g. "exited with status 0" or "killed by signal 9".
    pub description: String,
    /// True when the VM ended because husk asked it to.
    pub requested: bool,
}

/// When the parts of a VM came up, on the host's wall clock (the shim's start phases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchTimes {
    /// The last helper (virtiofsd, the vsock backend) was running, its socket listening.
    pub helpers_ready: Option<SystemTime>,
    /// The monitor process was spawned.
    pub vmm_spawned: Option<SystemTime>,
}

/// A VMM backend: turns a [`VmSpec`] into a running VM.
#[async_trait]
pub trait Vmm: Send + Sync {
    /// Backend name for logs and `check` output (`qemu-tcg`, `qemu-kvm`, …).
    fn name(&self) -> String;
    async fn launch(&self, spec: &VmSpec, log: &Logger) -> Result<Box<dyn VmHandle>, VmmError>;
}

/// A running VM and every host helper it needs (device backends, virtiofsd).
#[async_trait]
pub trait VmHandle: Send + Sync {
    /// Host pid of the VMM process.
    fn pid(&self) -> u32;
    /// Host side of the hybrid vsock.
    fn vsock_uds(&self) -> &Path;
    /// Becomes `Some` once the VMM process has ended.
    fn exited(&self) -> watch::Receiver<Option<VmExit>>;
    /// Recent diagnostic output of the VMM (stderr tail), for error messages.
    fn diagnostics(&self) -> String;
    /// `(role, pid)` of every host process this VM owns, recorded so that cleanup after a
    /// crashed shim can find them.
    fn processes(&self) -> Vec<(String, u32)>;
    /// When the helpers and the monitor started; empty for a VM that records none.
    fn launch_times(&self) -> LaunchTimes {
        LaunchTimes::default()
    }
    /// Waits up to `grace` for the VM to end on its own (the guest was asked to power off),
    /// then kills it; returns once the VMM and its helpers are gone and their sockets removed.
    async fn stop(&self, grace: Duration);
}
