//! Pause, resume and figures of a started container, through its cgroup.

use std::collections::HashMap;
use std::time::Duration;

use super::record;
use super::{ContainerError, Containers, freezer, spec, stats};

/// How long a pause or resume may take before it is given up (and a pause undone).
pub const FREEZE_WAIT: Duration = Duration::from_secs(5);

impl Containers {
    /// Freezes (`paused`) or thaws every process of the container.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        record::ready(&mut self.slots(), id)?.require_running(id)?;
        let dir = self.layout.cgroup_dir(id);
        tokio::task::spawn_blocking(move || freezer::set_frozen(&dir, paused, FREEZE_WAIT))
            .await??;
        slog::debug!(self.log, "container frozen state set"; "container" => id, "paused" => paused);
        Ok(())
    }

    /// Refuses work that would block in a frozen cgroup (a new exec would freeze on entry).
    pub fn require_not_paused(&self, id: &str) -> Result<(), ContainerError> {
        if freezer::is_frozen(&self.layout.cgroup_dir(id))? {
            return Err(ContainerError::Paused(id.to_owned()));
        }
        Ok(())
    }

    /// OOM kills counted in the container's cgroup so far (0 if it cannot be read).
    pub fn oom_kills(&self, id: &str) -> u64 {
        stats::oom_kills(&self.layout.cgroup_dir(id))
    }

    /// The container cgroup's figures.
    pub async fn stats(&self, id: &str) -> Result<stats::Figures, ContainerError> {
        self.process(id, "")?;
        let dir = self.layout.cgroup_dir(id);
        Ok(tokio::task::spawn_blocking(move || stats::read(&dir)).await??)
    }

    /// The pod cgroup's figures: every container of the pod together.
    pub async fn pod_stats(&self) -> Result<stats::Figures, ContainerError> {
        let dir = self.layout.cgroup_root.join(spec::CGROUP_PARENT);
        Ok(tokio::task::spawn_blocking(move || stats::read(&dir)).await??)
    }
}

impl Containers {
    /// Every created container's OOM kill count once one exceeds what `known` says (a
    /// container missing from it counts as 0), or after `max_wait`, whichever comes first.
    pub async fn wait_oom_kills(
        &self,
        known: &HashMap<String, u64>,
        max_wait: Duration,
    ) -> HashMap<String, u64> {
        let mut changes = self.oom_watch().map(|w| w.subscribe());
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let counts: HashMap<String, u64> = self
                .ids()
                .into_iter()
                .map(|id| {
                    let n = self.oom_kills(&id);
                    (id, n)
                })
                .collect();
            let risen = counts
                .iter()
                .any(|(id, n)| *n > known.get(id).copied().unwrap_or(0));
            if risen {
                return counts;
            }
            let changed = match changes.as_mut() {
                Some(rx) => tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_ok_and(|r| r.is_ok()),
                None => {
                    // No watch (yet): look again in a second.
                    let soon = tokio::time::Instant::now() + Duration::from_secs(1);
                    tokio::time::sleep_until(soon.min(deadline)).await;
                    changes = self.oom_watch().map(|w| w.subscribe());
                    tokio::time::Instant::now() < deadline
                }
            };
            if !changed {
                return counts;
            }
        }
    }
}
