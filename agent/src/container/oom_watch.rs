//! Live OOM kills for the shim's TaskOOM events: one inotify watch on the pod cgroup's
//! `memory.events`, which the kernel updates (and notifies) whenever a container below it
//! has a process OOM-killed, whether or not that container's init exits.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Counts the changes of `memory.events` in the pod cgroup.
pub struct OomWatch {
    changes: watch::Sender<u64>,
}

impl OomWatch {
    /// Watches `<pod_cgroup>/memory.events`; stops when the returned value is dropped.
    pub fn start(pod_cgroup: &Path) -> std::io::Result<std::sync::Arc<Self>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(&pod_cgroup.join("memory.events"), AddWatchFlags::IN_MODIFY)?;
        // The instance lives as long as a descriptor of it does: a duplicate, owned by a
        // File (nix's Inotify gives its descriptor up only by reference).
        let owned: OwnedFd = inotify.as_fd().try_clone_to_owned()?;
        // SAFETY: the File owns that descriptor and keeps it open, the same one, until the
        // AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(std::fs::File::from(owned)) }?;
        let watch = std::sync::Arc::new(Self {
            changes: watch::channel(0).0,
        });
        let weak = std::sync::Arc::downgrade(&watch);
        tokio::spawn(async move {
            loop {
                let Ok(mut ready) = fd.readable().await else {
                    return;
                };
                // Drained in full (the events say nothing the counts do not); the read
                // fails with WouldBlock once empty, which clears the readiness.
                let mut buf = [0u8; 4096];
                let drained = ready.try_io(|fd| -> std::io::Result<()> {
                    // The amount read does not matter: only that something changed.
                    while fd.get_ref().read(&mut buf)? > 0 {}
                    Ok(())
                });
                if drained.is_ok() {
                    // It ended other than with WouldBlock: the instance is broken and
                    // would stay readable. Waiters fall back to their timeout.
                    return;
                }
                let Some(watch) = weak.upgrade() else { return };
                watch.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Ok(watch)
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
