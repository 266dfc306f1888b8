//! `husk-vmm --vsock-backend <file>`: the hybrid-vsock device QEMU uses, served over
//! vhost-user by a process of its own. The guest-facing parsing (virtqueues, packets, the
//! host side of every connection) thus runs jailed ([`crate::jail`]: empty read-only root,
//! the pod's vsock socket directory as `/run`, a uid of its own, no capabilities) and
//! behind a seccomp filter ([`ThreadKind::VsockBackend`]), never in the root shim.
//!
//! The shim binds the vhost-user socket QEMU connects to and hands the listener over as
//! fd 3, so the socket's file is the shim's (owned by QEMU's uid, in QEMU's directory) and
//! the backend needs no access to it. The process ends when QEMU disconnects.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use husk_vmm_config::jail::in_socket_dir;
use husk_vmm_config::{BackendConfig, Contents, VHOST_LISTENER_FD};
use husk_vsock::{VhostUserVsock, VhostUserVsockConfig, VsockError};
use slog::{Logger, info};

use crate::jail::{self, JailError};
use crate::seccomp::{self, SeccompError, ThreadKind};
/// The main thread, the serving thread, the library's request and vring threads, with room.
const THREADS: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Config(#[from] husk_vmm_config::ConfigError),
    #[error("fd {VHOST_LISTENER_FD} is not the listening vhost-user socket: {0}")]
    Listener(#[source] nix::Error),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
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
            uds_path: in_socket_dir(&config.uds_path),
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
