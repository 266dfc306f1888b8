//! A container's volumes in the guest: their virtio-fs submounts made in the agent's own
//! mount namespace, guest copies of atomically updated volumes ([`volume_mirror`]) in
//! place of the share, and `SyncVolume`, which brings such a copy up to date.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use slog::{Logger, info, warn};

use super::volume_mirror::{self, Limits};
use super::{ContainerError, Containers, Layout};

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_readonly(m: &Mount) -> bool {
    m.options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o == "ro"))
}

/// The sources of `spec`'s bind mounts that lie in the pod share.
fn shared_sources(spec: &Spec, shared: &Path) -> Vec<PathBuf> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| is_bind(m))
        .filter_map(|m| m.source().clone())
        .filter(|s| s.starts_with(shared))
        .collect()
}

/// Opens each shared volume directory so its virtio-fs submount is made here, in the
/// agent's (shared) mount namespace, before a container's namespace copies it: the
/// containers then receive mounts propagated into it later, and `rshared` ones share
/// their own, instead of each making a private submount. Failures are left to
/// libcontainer to report.
pub async fn automount(spec: &Spec, shared: &Path) {
    let sources = shared_sources(spec, shared);
    let _ = tokio::task::spawn_blocking(move || {
        for source in sources {
            let _ = std::fs::read_dir(source);
        }
    })
    .await;
}

/// Points each read-only, atomically updated volume of container `id` at a guest copy
/// (see [`volume_mirror`]); a volume that cannot be copied stays shared directly.
pub async fn use_guest_copies(spec: &mut Spec, layout: &Layout, id: &str, log: &Logger) {
    let Some(mounts) = spec.mounts_mut() else {
        return;
    };
    let bundle = layout.bundle(id);
    for m in mounts.iter_mut().filter(|m| is_bind(m) && is_readonly(m)) {
        let Some(source) = m.source().clone() else {
            continue;
        };
        if volume_mirror::check_source(&layout.shared_dir, id, &source).is_err() {
            continue;
        }
        let Some(mirror) = volume_mirror::mirror_path(&bundle, &source) else {
            continue;
        };
        let (from, to) = (source.clone(), mirror.clone());
        let made = tokio::task::spawn_blocking(move || {
            if !volume_mirror::is_atomic_volume(&from) {
                return Ok(false);
            }
            volume_mirror::create(&from, &to, Limits::GUEST).map(|()| true)
        })
        .await;
        match made {
            Ok(Ok(true)) => {
                info!(log, "volume kept as a guest copy"; "destination" => %m.destination().display());
                m.set_source(Some(mirror));
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(log, "volume shared without inotify"; "destination" => %m.destination().display(), "error" => %e)
            }
            Err(e) => warn!(log, "copying a volume failed"; "error" => %e),
        }
    }
}

impl Containers {
    /// Brings the guest copy of container `id`'s volume `source` up to date; `data_target`
    /// is the `..data` link's target on the host (empty if unknown).
    pub async fn sync_volume(
        &self,
        id: &str,
        source: &Path,
        data_target: &str,
    ) -> Result<(), ContainerError> {
        let _ = self.process(id, "")?;
        volume_mirror::check_source(&self.layout.shared_dir, id, source)?;
        let mirror = volume_mirror::mirror_path(&self.layout.bundle(id), source)
            .ok_or_else(|| volume_mirror::MirrorError::UnknownSource(source.to_path_buf()))?;
        if !mirror.is_dir() {
            // Not copied (too large, or not an atomic volume): the share shows it as is.
            return Ok(());
        }
        let source = source.to_path_buf();
        let target = (!data_target.is_empty()).then(|| PathBuf::from(data_target));
        let _one_at_a_time = self.volume_sync.lock().await;
        tokio::task::spawn_blocking(move || {
            volume_mirror::sync(&source, &mirror, Limits::GUEST, target.as_deref())
        })
        .await??;
        Ok(())
    }
}
