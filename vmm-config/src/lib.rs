//! `husk-vmm-config`: what the shim hands `husk-vmm`, as plain data — the contract between
//! the shim's launchers (`husk-hypervisor`) and the monitor binary (`husk-vmm`), the way
//! `husk-protocol` is the contract between the shim and the agent.
//!
//! Each mode of `husk-vmm` reads one JSON file the shim wrote ([`LaunchFile`]):
//! - `--config`: a [`VmConfig`] (the VM to run, and the jail to run it in);
//! - `--vsock-backend`: a [`BackendConfig`] (the hybrid-vsock device QEMU uses);
//! - `--exec`: an [`ExecConfig`] (a program husk does not build, QEMU, to run jailed).
//!
//! It is its own crate so the shim can write these files without linking the monitor
//! (kvm-ioctls, linux-loader, event-manager, seccompiler), and the monitor can read them
//! without linking the shim's backends. Both sides validate: the shim before it writes, the
//! monitor before it acts.

mod exec;
pub mod jail;
mod vm;
mod vsock_backend;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use exec::ExecConfig;
pub use jail::{Bind, Contents, JailConfig, Link};
pub use vm::{
    FIRST_TAP_FD, FsConfig, MAX_CMDLINE_LEN, MAX_DEVICES, MAX_FS_TAG_LEN, MAX_MEMORY_MIB,
    MAX_VCPUS, MIN_MEMORY_MIB, NetConfig, VmConfig, VsockConfig,
};
pub use vsock_backend::{BackendConfig, VHOST_LISTENER_FD};

/// Name of the monitor binary.
pub const VMM_BINARY: &str = "husk-vmm";

/// `husk-vmm`'s exit status (what the shim reports).
/// The guest stopped by itself (power off, reboot, triple fault, panic with `panic=-1`).
pub const EXIT_GUEST_STOPPED: i32 = 0;
/// The VM could not be built (bad config, missing kernel, no KVM, …).
pub const EXIT_SETUP_FAILED: i32 = 1;
/// Bad command line.
pub const EXIT_USAGE: i32 = 2;
/// KVM failed while the guest ran.
pub const EXIT_VCPU_FAILED: i32 = 3;
/// The guest reported a crash (KVM system event).
pub const EXIT_GUEST_CRASHED: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing a husk-vmm launch file: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("invalid husk-vmm launch file: {0}")]
    Invalid(String),
}

/// A file the shim writes and `husk-vmm` reads: JSON, unknown fields refused, validated on
/// both ends.
pub trait LaunchFile: Serialize + DeserializeOwned {
    /// What the file describes, for errors.
    const WHAT: &'static str;

    fn validate(&self) -> Result<(), ConfigError>;

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            what: Self::WHAT,
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_slice(&text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    fn to_json(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self).map_err(ConfigError::Parse)
    }
}
