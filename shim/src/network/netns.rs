//! Working inside a pod's network namespace from the shim's multi-threaded runtime.
//!
//! `setns` changes the calling thread only, and a tokio task can move between threads, so
//! nothing here enters a namespace on a runtime thread: [`run_in`] does the work on a fresh
//! OS thread that ends with it. What outlives that thread keeps the namespace it was made in:
//! a netlink socket answers for the namespace it was created in, and a tap opened through
//! `/dev/net/tun` lives in its opener's namespace. So [`rtnetlink_in`] creates the socket
//! there and drives it from the runtime.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_sys::{TokioSocket, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns};

use super::NetworkError;

/// `NSFS_MAGIC`: the file system of `/proc/<pid>/ns/*` and of their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open handle on a network namespace (held open, so it cannot be replaced under us).
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<Self, NetworkError> {
        let open_err = |source: io::Error| NetworkError::OpenNamespace {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let fs = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| open_err(e.into()))?;
        if fs.filesystem_type().0 != NSFS_MAGIC {
            return Err(NetworkError::NotANamespace(path.to_path_buf()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread of its own that has joined this namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, NetworkError>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let ns = self.file.try_clone().map_err(NetworkError::Thread)?;
        let joined = std::thread::Builder::new()
            .name("husk-netns".into())
            .spawn(move || -> Result<T, NetworkError> {
                // A namespace of another type is refused here (CLONE_NEWNET checks it).
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetworkError::Enter)?;
                f().map_err(NetworkError::InNamespace)
            })
            .map_err(NetworkError::Thread)?
            .join();
        joined.unwrap_or(Err(NetworkError::ThreadPanicked))
    }

    /// An rtnetlink handle for this namespace, driven by the current tokio runtime.
    pub async fn rtnetlink(&self) -> Result<rtnetlink::Handle, NetworkError> {
        let ns = NetNs {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(NetworkError::Thread)?,
        };
        let fd = tokio::task::spawn_blocking(move || {
            ns.run_in(|| {
                let socket = netlink_sys::Socket::new(NETLINK_ROUTE)?;
                // SAFETY: `into_raw_fd` hands over the only owner of the descriptor.
                Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
            })
        })
        .await
        .map_err(|_| NetworkError::ThreadPanicked)??;
        // SAFETY: `fd` is an open AF_NETLINK socket we own; the TokioSocket takes it over
        // (and registers it with this runtime's reactor).
        let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(handle)
    }
}
