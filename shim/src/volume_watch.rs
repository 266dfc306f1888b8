//! Watches the host directories of a pod's atomically updated volumes (configMap, secret,
//! downwardAPI, projected: a read-only directory with kubelet's `..data` link) and reports
//! when kubelet changed one, so the agent can replay the change on its guest copy, where
//! the container's inotify watchers see it. FUSE cannot carry host-side changes to guest
//! watchers; an event from the host is also faster and cheaper than polling in the guest.
//!
//! One inotify instance per pod. Only the top level of each volume is watched: kubelet's
//! every update ends in renaming `..data` there. Events are coalesced: kubelet's one update
//! is several (a new directory, `..data_tmp`, the rename, the old directory's removal).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

pub use husk_protocol::{ATOMIC_DATA_LINK as DATA_LINK, is_atomic_volume};
/// Quiet time that ends a burst of events (kubelet's update is a few syscalls apart).
const SETTLE: Duration = Duration::from_millis(50);
/// A burst is reported after this long even if events keep coming.
const MAX_BURST: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum VolumeWatchError {
    #[error("creating the pod's inotify instance: {0}")]
    Init(#[source] std::io::Error),
    #[error("watching volume directory {path:?}: {errno}")]
    Watch { path: PathBuf, errno: nix::Error },
}

/// A volume a container mounts: its host directory (the bind in the pod directory) and
/// its path in the share, as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub container_id: String,
    pub guest_source: String,
    pub host_dir: PathBuf,
}

/// A watched volume that changed, with its `..data` target after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub volume: Watched,
    pub data_target: String,
}

/// The inotify instance as tokio needs it (nix gives only `AsFd`).
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct VolumeWatch {
    fd: AsyncFd<InotifyFd>,
    /// Several containers mounting one volume share its watch (inotify watches inodes).
    watches: Mutex<HashMap<WatchDescriptor, Vec<Watched>>>,
    closed: Notify,
    is_closed: std::sync::atomic::AtomicBool,
}

impl VolumeWatch {
    pub fn new() -> Result<Self, VolumeWatchError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| VolumeWatchError::Init(e.into()))?;
        Ok(Self {
            // SAFETY: `InotifyFd` owns the descriptor and keeps it open, the same one, until
            // the AsyncFd drops it.
            fd: unsafe { AsyncFd::register(InotifyFd(inotify)) }
                .map_err(|e| VolumeWatchError::Init(e.into()))?,
            watches: Mutex::new(HashMap::new()),
            closed: Notify::new(),
            is_closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn watches(&self) -> MutexGuard<'_, HashMap<WatchDescriptor, Vec<Watched>>> {
        // Entries are inserted and removed whole: a poisoned map is consistent.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `volume.host_dir` (never through a symlink) for kubelet's updates.
    pub fn watch(&self, volume: Watched) -> Result<(), VolumeWatchError> {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(&volume.host_dir, mask)
            .map_err(|errno| VolumeWatchError::Watch {
                path: volume.host_dir.clone(),
                errno,
            })?;
        self.watches().entry(wd).or_default().push(volume);
        Ok(())
    }

    /// Stops reporting container `id`'s volumes; a watch nobody uses any more is removed.
    pub fn forget(&self, container_id: &str) {
        let mut watches = self.watches();
        let mut unused = Vec::new();
        for (wd, volumes) in watches.iter_mut() {
            volumes.retain(|v| v.container_id != container_id);
            if volumes.is_empty() {
                unused.push(*wd);
            }
        }
        for wd in unused {
            watches.remove(&wd);
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Ends [`Self::next_changes`] for good.
    pub fn close(&self) {
        self.is_closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.closed.notify_waiters();
        self.closed.notify_one();
    }

    /// Waits for the next burst of changes; `None` once closed (or if inotify fails).
    pub async fn next_changes(&self) -> Option<Vec<Change>> {
        loop {
            let mut seen = Vec::new();
            tokio::select! {
                read = self.read_into(&mut seen) => read?,
                () = self.closed.notified() => return None,
            }
            let burst = tokio::time::Instant::now();
            while burst.elapsed() < MAX_BURST {
                match tokio::time::timeout(SETTLE, self.read_into(&mut seen)).await {
                    Ok(read) => read?,
                    Err(_quiet) => break,
                }
            }
            if self.is_closed.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let changes = self.changes(&seen);
            if !changes.is_empty() {
                return Some(changes);
            }
        }
    }

    /// Reads the events that are ready (waiting for some) and adds their watches to
    /// `seen`; `None` if inotify failed.
    async fn read_into(&self, seen: &mut Vec<WatchDescriptor>) -> Option<()> {
        loop {
            let mut ready = self.fd.readable().await.ok()?;
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
                Ok(Ok(events)) => {
                    for e in events {
                        if !seen.contains(&e.wd) {
                            seen.push(e.wd);
                        }
                    }
                    return Some(());
                }
                Ok(Err(_)) => return None,
                Err(_would_block) => continue,
            }
        }
    }

    fn changes(&self, seen: &[WatchDescriptor]) -> Vec<Change> {
        let watches = self.watches();
        seen.iter()
            .filter_map(|wd| watches.get(wd))
            .flatten()
            .map(|volume| Change {
                data_target: std::fs::read_link(volume.host_dir.join(DATA_LINK))
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                volume: volume.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn kubelet_update(dir: &Path, generation: u32) {
        let name = format!("..gen_{generation}");
        std::fs::create_dir(dir.join(&name)).unwrap();
        std::fs::write(dir.join(&name).join("key"), generation.to_string()).unwrap();
        symlink(&name, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join(DATA_LINK)).unwrap();
    }

    fn watched(id: &str, dir: &Path) -> Watched {
        Watched {
            container_id: id.into(),
            guest_source: format!("/run/husk/shared/{id}/mounts/0-cfg"),
            host_dir: dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn one_update_is_one_change_per_container() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_update(dir.path(), 1);
        assert!(is_atomic_volume(dir.path()));
        let w = VolumeWatch::new().unwrap();
        w.watch(watched("c1", dir.path())).unwrap();
        w.watch(watched("c2", dir.path())).unwrap();
        kubelet_update(dir.path(), 2);
        let changes = tokio::time::timeout(Duration::from_secs(5), w.next_changes())
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = changes
            .iter()
            .map(|c| c.volume.container_id.as_str())
            .collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert!(changes.iter().all(|c| c.data_target == "..gen_2"));

        w.forget("c1");
        kubelet_update(dir.path(), 3);
        let changes = w.next_changes().await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].volume.container_id, "c2");
        w.forget("c2");
        assert!(w.watches().is_empty());
    }

    #[tokio::test]
    async fn close_ends_the_wait() {
        let w = std::sync::Arc::new(VolumeWatch::new().unwrap());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.next_changes().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.close();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(ended, Ok(Ok(None))));
    }

    #[test]
    fn symlinks_are_not_watched_through() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        symlink(dir.path(), &link).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let w = VolumeWatch::new().unwrap();
        assert!(w.watch(watched("c1", &link)).is_err());
    }
}
