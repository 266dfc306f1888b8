//! `husk-vmm --vsock-backend <file>`: the hybrid-vsock device QEMU uses, served over
//! vhost-user by a process of its own. The guest-facing parsing (virtqueues, packets, the
//! host side of every connection) thus runs jailed ([`crate::jail`]: empty read-only root,
//! the pod's vsock socket directory as `/run`, a uid of its own, no capabilities) and
//! behind a seccomp filter ([`ThreadKind::VsockBackend`]), never in the root shim.
//!
//! The shim binds the vhost-user socket QEMU connects to and hands the listener over as
//! fd 3, so the socket's file is the shim's (owned by QEMU's uid, in QEMU's directory) and
//! the backend needs no access to it. The process ends when QEMU disconnects.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slog::{Logger, info};

use super::server::{VhostUserVsock, VhostUserVsockConfig, VsockError};
use crate::builtin::seccomp::{self, SeccompError, ThreadKind};
use crate::jail::{self, Contents, JailConfig, JailError};

/// The vhost-user listener arrives as this descriptor.
pub const VHOST_LISTENER_FD: RawFd = 3;
/// The main thread, the serving thread, the library's request and vring threads, with room.
const THREADS: u64 = 8;

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

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("reading the vsock backend config {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the vsock backend config: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("invalid vsock backend config: {0}")]
    Invalid(String),
    #[error("fd {VHOST_LISTENER_FD} is not the listening vhost-user socket: {0}")]
    Listener(#[source] nix::Error),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

impl BackendConfig {
    pub fn from_file(path: &Path) -> Result<Self, BackendError> {
        let text = std::fs::read(path).map_err(|source| BackendError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_slice(&text).map_err(BackendError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> Result<String, BackendError> {
        serde_json::to_string_pretty(self).map_err(BackendError::Parse)
    }

    pub fn validate(&self) -> Result<(), BackendError> {
        self.jail.validate().map_err(BackendError::Invalid)?;
        self.jail
            .check_socket(&self.uds_path)
            .map_err(BackendError::Invalid)?;
        if !super::device::is_valid_guest_cid(self.guest_cid) {
            return Err(BackendError::Invalid(format!(
                "guest CID {} is reserved or too large",
                self.guest_cid
            )));
        }
        Ok(())
    }
}

/// Jails the process, serves QEMU until it disconnects. Must run while the process has one
/// thread and is still root, with the vhost-user listener at [`VHOST_LISTENER_FD`].
pub fn run(config: &BackendConfig, log: &Logger) -> Result<(), BackendError> {
    let listener = vhost_listener()?;
    let contents = Contents {
        threads: THREADS,
        inherited_fds: 1,
        ..Contents::default()
    };
    jail::enter(&config.jail, &contents)?;
    let vsock = VhostUserVsock::start(
        VhostUserVsockConfig {
            guest_cid: config.guest_cid,
            uds_path: jail::in_socket_dir(&config.uds_path),
            leave_socket_file: true,
        },
        listener,
        log.clone(),
    )?;
    // After the hybrid socket is bound, before QEMU can connect: no guest byte is read
    // without the filter.
    let allowed = seccomp::install_all_threads(ThreadKind::VsockBackend)?;
    info!(log, "vsock backend jailed and filtered"; "syscalls" => allowed);
    vsock.wait();
    Ok(())
}

/// Takes fd 3, checking that it is a listening socket (a wrong hand-over must not leave
/// the backend waiting forever on something else).
fn vhost_listener() -> Result<UnixListener, BackendError> {
    // SAFETY: fd 3 is the descriptor the shim handed over for this purpose; nothing else in
    // this process owns it. If it is not open, the check below fails and it is not used.
    let fd = unsafe { OwnedFd::from_raw_fd(VHOST_LISTENER_FD) };
    let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
        .map_err(BackendError::Listener)?;
    if !listening {
        return Err(BackendError::Listener(nix::Error::EINVAL));
    }
    Ok(UnixListener::from(fd))
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
        let mut cid = sample();
        cid.guest_cid = 2;
        assert!(cid.validate().is_err());
        let mut root = sample();
        root.jail.gid = 0;
        assert!(root.validate().is_err());
    }
}
