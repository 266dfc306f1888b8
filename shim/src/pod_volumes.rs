//! The pod's atomically updated volumes (see [`crate::volume_watch`]): watched on the
//! host while their containers exist; each change is passed to the agent, which updates
//! its guest copy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::SHARED_DIR_GUEST;
use slog::{info, warn};

use crate::guest_spec::HostBind;
use crate::pod::Pod;
use crate::volume_watch::Watched;

/// Bound on one SyncVolume: the agent waits up to 3 s for a fresh view, then copies at
/// most a few MiB.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

impl Pod {
    /// Watches container `id`'s atomically updated volumes; one that cannot be watched
    /// still works, without updates reaching inotify watchers, and the log says so.
    pub fn watch_volumes(&self, id: &str, binds: &[HostBind]) {
        let Some(watch) = self.volumes.as_ref() else {
            return;
        };
        for b in binds.iter().filter(|b| b.atomic) {
            let Some(host_dir) = self.host.share_path(&b.share_path) else {
                continue;
            };
            let guest_source = Path::new(SHARED_DIR_GUEST)
                .join(&b.share_path)
                .to_string_lossy()
                .into_owned();
            let volume = Watched {
                container_id: id.to_owned(),
                guest_source,
                host_dir,
            };
            if let Err(e) = watch.watch(volume) {
                warn!(self.log, "volume updates will not reach inotify watchers"; "container" => id, "error" => %e);
            }
        }
    }

    /// Stops watching container `id`'s volumes.
    pub fn forget_volumes(&self, id: &str) {
        if let Some(watch) = self.volumes.as_ref() {
            watch.forget(id);
        }
    }

    /// Passes each host-side volume change to the agent, until the pod shuts down.
    pub fn spawn_volume_sync(self: &Arc<Self>) {
        let Some(watch) = self.volumes.clone() else {
            return;
        };
        let pod = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(changes) = watch.next_changes().await {
                let Some(pod) = pod.upgrade() else { return };
                for c in changes {
                    let v = &c.volume;
                    let sync =
                        pod.agent
                            .sync_volume(&v.container_id, &v.guest_source, &c.data_target);
                    match tokio::time::timeout(SYNC_TIMEOUT, sync).await {
                        Ok(Ok(())) => {
                            info!(pod.log, "volume update passed to the guest"; "container" => &v.container_id, "volume" => &v.guest_source)
                        }
                        Ok(Err(e)) => {
                            warn!(pod.log, "volume update not applied in the guest"; "container" => &v.container_id, "error" => %e)
                        }
                        Err(_) => {
                            warn!(pod.log, "volume update timed out in the guest"; "container" => &v.container_id)
                        }
                    }
                }
            }
        });
    }
}
