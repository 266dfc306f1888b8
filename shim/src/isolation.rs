//! What the serving daemon does before anything else, while it is still single-threaded:
//!
//! - fork a *socket guard*: a tiny child that waits for the daemon to die (EOF on a pipe)
//!   and then removes the daemon's ttrpc socket, the one thing of a pod that must live in
//!   the host's mount namespace (containerd connects to it). Without it, a shim killed
//!   while containerd removes the bundle (so that `delete` cannot run) leaves the socket.
//! - move into a private mount namespace (slave of the host's): every mount the pod makes
//!   (container rootfs, the shared directory, the tmpfs holding the pod's state) lives and
//!   dies with the shim, its VMM and virtiofsd. A crashed shim leaves no mounts and no
//!   state files behind, and the host's mount table never shows pod internals.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, fork, pipe2};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IsolationError {
    #[error("creating the socket guard: {0}")]
    Guard(nix::Error),
    #[error("entering a private mount namespace: {0}")]
    Namespace(nix::Error),
}

/// Forks the socket guard. The returned write end must stay open for the daemon's lifetime
/// (it is close-on-exec, so the VMM and helpers do not keep the guard waiting).
pub fn spawn_socket_guard(socket: &Path) -> Result<OwnedFd, IsolationError> {
    let path = CString::new(socket.as_os_str().as_encoded_bytes())
        .map_err(|_| IsolationError::Guard(nix::Error::EINVAL))?;
    let (read_end, write_end) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(IsolationError::Guard)?;
    // SAFETY: the daemon is still single-threaded here, so the child may run arbitrary
    // code; it only makes raw syscalls and leaves with _exit.
    match unsafe { fork() }.map_err(IsolationError::Guard)? {
        ForkResult::Child => {
            let keep = read_end.as_raw_fd();
            // SAFETY: plain syscalls on descriptors and a path owned by this child; _exit
            // skips destructors of state inherited from the parent.
            unsafe {
                for fd in 0..1024 {
                    if fd != keep {
                        libc::close(fd);
                    }
                }
                let mut byte = 0u8;
                // Returns 0 (EOF) once every write end is closed: the daemon is gone.
                while libc::read(keep, (&raw mut byte).cast(), 1) != 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        break;
                    }
                }
                libc::unlink(path.as_ptr());
                libc::_exit(0);
            }
        }
        ForkResult::Parent { .. } => {
            drop(read_end);
            Ok(write_end)
        }
    }
}

/// Unshares the mount namespace; host mounts keep propagating in, ours never out.
pub fn enter_private_mount_namespace() -> Result<(), IsolationError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(IsolationError::Namespace)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(IsolationError::Namespace)
}
