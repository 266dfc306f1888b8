//! `husk-vmm --vsock-backend`: the hybrid-vsock device QEMU uses, served over vhost-user by
//! a jailed process of its own.

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jail::JailConfig;
use crate::{ConfigError, LaunchFile};

/// The vhost-user listener arrives as this descriptor.
pub const VHOST_LISTENER_FD: RawFd = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// For logs.
    pub name: String,
    pub guest_cid: u64,
    /// The hybrid-vsock socket the backend creates (a host path in `jail.sockets`).
    pub uds_path: PathBuf,
    pub jail: JailConfig,
}

impl LaunchFile for BackendConfig {
    const WHAT: &'static str = "vsock backend description";

    /// The guest CID is checked by the device when it starts.
    fn validate(&self) -> Result<(), ConfigError> {
        self.jail.validate().map_err(ConfigError::Invalid)?;
        self.jail
            .check_socket(&self.uds_path)
            .map_err(ConfigError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BackendConfig {
        BackendConfig {
            name: "pod".into(),
            guest_cid: 3,
            uds_path: "/state/pod/vm/vsock.sock".into(),
            jail: JailConfig {
                root: "/state/pod/vsock-root".into(),
                sockets: "/state/pod/vm".into(),
                uid: 1_500_000_002,
                gid: 1_500_000_002,
            },
        }
    }

    #[test]
    fn config_round_trips_and_is_checked() {
        let config = sample();
        config.validate().unwrap();
        let back: BackendConfig = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(back, config);
        let mut elsewhere = sample();
        elsewhere.uds_path = "/run/other/vsock.sock".into();
        assert!(elsewhere.validate().is_err());
        let mut root = sample();
        root.jail.gid = 0;
        assert!(root.validate().is_err());
    }
}
