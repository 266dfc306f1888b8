//! Pause, Resume and Stats: a running container frozen and thawed by the guest's cgroup
//! freezer, and its figures as the guest kernel counts them.

use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::topics::{TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC};

use oci_spec::runtime::LinuxResources;

use super::Shim;
use super::error::{TaskError, TaskResult};
use super::metrics;
use super::process::Status;

/// Largest resources object an update may carry (containerd sends a few hundred bytes).
const MAX_RESOURCES_JSON: usize = 64 * 1024;

impl Shim {
    /// Pause (`paused`) freezes every process of running container `id`; pausing a paused
    /// container does nothing. Resume thaws a paused one.
    pub async fn set_paused(&self, id: &str, paused: bool) -> TaskResult<()> {
        let container = self.container(id)?;
        let running = container.init.status() == Status::Running;
        match (paused, container.is_paused()) {
            _ if !running => {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {id} is not running; only a running container can be paused \
                     or resumed"
                )));
            }
            (true, true) => return Ok(()),
            (false, false) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {id} is not paused"
                )));
            }
            _ => {}
        }
        self.require_pod()?.agent.set_paused(id, paused).await?;
        container.set_paused(paused);
        if paused {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_owned();
            self.publisher
                .publish(TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_owned();
            self.publisher
                .publish(TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(())
    }

    /// Task Update: new limits for container `id`. containerd sends the OCI
    /// `linux.resources` object as JSON; it is checked here before the guest sees it.
    pub async fn update(&self, id: &str, resources: Option<&Any>) -> TaskResult<()> {
        let container = self.container(id)?;
        if matches!(container.init.status(), Status::Stopped { .. }) {
            return Err(TaskError::FailedPrecondition(format!(
                "container {id} has stopped"
            )));
        }
        let json = resources.map(|r| r.value.as_slice()).unwrap_or_default();
        if json.len() > MAX_RESOURCES_JSON {
            return Err(TaskError::InvalidArgument(format!(
                "the resources of the update are {} bytes; at most {MAX_RESOURCES_JSON} are accepted",
                json.len()
            )));
        }
        serde_json::from_slice::<LinuxResources>(json).map_err(|e| {
            TaskError::InvalidArgument(format!(
                "the update's resources are not an OCI linux.resources object: {e}"
            ))
        })?;
        self.require_pod()?
            .agent
            .update_container(id, json.to_vec())
            .await?;
        Ok(())
    }

    /// The container's cgroup v2 metrics, packed as containerd expects them.
    pub async fn stats(&self, id: &str) -> TaskResult<Any> {
        self.container(id)?;
        let figures = self.require_pod()?.agent.container_stats(id).await?;
        metrics::to_any(&metrics::cgroup_v2_metrics(&figures)?)
    }
}
