//! Exec: registers an extra process of a running container; Start runs it in the guest.

use std::sync::Arc;

use containerd_shim_protos::api::ExecProcessRequest;
use containerd_shim_protos::events::task::TaskExecAdded;
use containerd_shim_protos::topics::TASK_EXEC_ADDED_EVENT_TOPIC;

use super::Shim;
use super::error::{TaskError, TaskResult};
use super::process::{Process, Status};
use crate::ids;
use crate::stdio::StdioPaths;

#[derive(Debug, thiserror::Error)]
#[error("exec process spec is not a valid OCI process: {0}")]
struct InvalidProcessSpec(#[source] serde_json::Error);

/// An OCI `process` object is a few KiB; refuse absurd ones before they reach the guest.
const MAX_PROCESS_SPEC: usize = 1024 * 1024;

impl Shim {
    pub async fn exec(&self, req: &ExecProcessRequest) -> TaskResult<()> {
        // The exec id names files in the guest and stdio streams: containerd's identifier
        // rule, as for container ids.
        ids::validate("exec id", &req.exec_id).map_err(TaskError::invalid)?;
        let container = self.container(&req.id)?;
        if container.init.status() != Status::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| {
                TaskError::InvalidArgument("exec request carries no process spec".into())
            })?;
        if spec.len() > MAX_PROCESS_SPEC {
            return Err(TaskError::InvalidArgument(format!(
                "exec process spec is {} bytes; the limit is {MAX_PROCESS_SPEC}",
                spec.len()
            )));
        }
        let process: oci_spec::runtime::Process = serde_json::from_slice(&spec)
            .map_err(|source| TaskError::invalid(InvalidProcessSpec(source)))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(TaskError::InvalidArgument(
                "exec process has no args".into(),
            ));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container.add_exec(Arc::new(Process::new(&req.id, &req.exec_id, stdio, spec)))?;
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher
            .publish(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }
}
