//! Pause, Resume and Stats: a running container frozen and thawed by the guest's cgroup
//! freezer, and its figures as the guest kernel counts them.

use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::topics::{TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC};

use super::Shim;
use super::error::{TaskError, TaskResult};
use super::metrics;
use super::process::Status;

impl Shim {
    /// Freezes every process of container `id`. Pausing a paused container does nothing.
    pub async fn pause(&self, id: &str) -> TaskResult<()> {
        let container = self.container(id)?;
        if container.init.status() != Status::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "container {id} is not running; only a running container can be paused"
            )));
        }
        if container.is_paused() {
            return Ok(());
        }
        self.require_pod()?.agent.set_paused(id, true).await?;
        container.set_paused(true);
        let mut ev = TaskPaused::new();
        ev.container_id = id.to_owned();
        self.publisher
            .publish(TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    /// Thaws container `id`, which must be paused.
    pub async fn resume(&self, id: &str) -> TaskResult<()> {
        let container = self.container(id)?;
        if !container.is_paused() || container.init.status() != Status::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "container {id} is not paused"
            )));
        }
        self.require_pod()?.agent.set_paused(id, false).await?;
        container.set_paused(false);
        let mut ev = TaskResumed::new();
        ev.container_id = id.to_owned();
        self.publisher
            .publish(TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    /// The container's cgroup v2 metrics, packed as containerd expects them.
    pub async fn stats(&self, id: &str) -> TaskResult<Any> {
        self.container(id)?;
        let figures = self.require_pod()?.agent.container_stats(id).await?;
        metrics::to_any(&metrics::cgroup_v2_metrics(&figures)?)
    }
}
