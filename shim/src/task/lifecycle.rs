//! Start, Kill, Wait, Delete, State and the small per-process operations.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::{ProcessInfo, StateResponse, Status as ApiStatus};
use containerd_shim_protos::events::task::{TaskDelete, TaskExecStarted, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::topics::{
    TASK_DELETE_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use slog::warn;

use super::Shim;
use super::error::{TaskError, TaskResult};
use super::process::{Process, Status};
use crate::start_phases::Mark;
use crate::stdio::{ProcessIo, STDIN_DRAIN_TIMEOUT};

/// How long Delete waits for a killed, never-started process to be reported exited.
const KILLED_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Exit information for Delete and Wait responses.
pub struct ExitInfo {
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Timestamp,
}

impl Shim {
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> TaskResult<u32> {
        let container = self.container(id)?;
        let process = container.process(exec_id)?;
        if process.status() != Status::Created {
            return Err(TaskError::FailedPrecondition(format!(
                "{} is not in the created state",
                describe(&process)
            )));
        }
        let pod = self.require_pod()?;
        if process.is_init() {
            pod.agent.start_container(id).await?;
            process.set_running();
            pod.mark_start(Mark::ProcessStarted, None);
            let mut ev = TaskStart::new();
            ev.container_id = id.to_string();
            ev.pid = process.guest_pid();
            self.publisher
                .publish(TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            if container.init.status() != Status::Running {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {id} is not running"
                )));
            }
            if container.is_paused() {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {id} is paused; resume it before starting an exec"
                )));
            }
            let io = ProcessIo::attach(pod.agent.as_ref(), id, exec_id, &process.stdio, &self.log)
                .await
                .map_err(|e| TaskError::internal("attaching exec stdio", e))?;
            let pid = pod
                .agent
                .exec_process(
                    id,
                    exec_id,
                    process.exec_spec.clone(),
                    process.stdio.for_agent(),
                )
                .await?;
            process.set_guest_pid(pid);
            process.set_io(io);
            process.set_running();
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_string();
            ev.exec_id = exec_id.to_string();
            ev.pid = pid;
            self.publisher
                .publish(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
            self.spawn_exit_monitor(pod, process.clone());
        }
        Ok(process.guest_pid())
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> TaskResult<()> {
        let process = self.container(id)?.process(exec_id)?;
        match process.status() {
            // Signalling something that already exited is not an error (containerd retries).
            Status::Stopped { .. } => return Ok(()),
            Status::Created if !process.is_init() => {
                return Err(TaskError::FailedPrecondition(format!(
                    "{} has not been started",
                    describe(&process)
                )));
            }
            _ => {}
        }
        let pod = self.require_pod()?;
        match pod.agent.signal_process(id, exec_id, signal, all).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(ttrpc::Code::NOT_FOUND) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> TaskResult<(u32, Timestamp)> {
        let process = self.container(id)?.process(exec_id)?;
        Ok(process.wait_stopped().await)
    }

    pub async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> TaskResult<ExitInfo> {
        let container = self.container(id)?;
        let process = container.process(exec_id)?;
        if process.status() == Status::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "{} is running; kill it before deleting",
                describe(&process)
            )));
        }
        if !process.is_init() {
            container.remove_exec(exec_id);
            let (exit_status, exited_at) = stopped_or_default(&process);
            return Ok(ExitInfo {
                pid: process.guest_pid(),
                exit_status,
                exited_at,
            });
        }
        if let Some(pod) = self.pod() {
            if let Err(e) = pod.agent.remove_container(id).await {
                warn!(self.log, "agent could not remove the container"; "container" => id, "error" => %e);
            }
            if process.status() == Status::Created {
                // Removing a created container kills its init; let the monitor report it.
                let _ = tokio::time::timeout(KILLED_EXIT_WAIT, process.wait_stopped()).await;
            }
            if let Err(e) = pod.remove_container_files(id).await {
                warn!(self.log, "removing container files"; "container" => id, "error" => %e);
            }
        }
        for p in container.all_processes() {
            p.abort_io();
        }
        if let Ok(mut c) = self.containers.lock() {
            c.remove(id);
        }
        let (exit_status, exited_at) = stopped_or_default(&process);
        let info = ExitInfo {
            pid: process.guest_pid(),
            exit_status,
            exited_at,
        };
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_string();
        ev.id = id.to_string();
        ev.pid = info.pid;
        ev.exit_status = info.exit_status;
        ev.exited_at = MessageField::some(info.exited_at.clone());
        self.publisher
            .publish(TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        if self.container_count() == 0 {
            // Synchronous, so that when the last Delete returns nothing of the pod is left.
            self.shutdown_if_empty().await;
        }
        Ok(info)
    }

    pub fn state(&self, id: &str, exec_id: &str) -> TaskResult<StateResponse> {
        let container = self.container(id)?;
        let process = container.process(exec_id)?;
        let mut r = StateResponse::new();
        r.id = if exec_id.is_empty() {
            id.to_string()
        } else {
            exec_id.to_string()
        };
        r.exec_id = exec_id.to_string();
        r.bundle = container.bundle.clone();
        r.pid = process.guest_pid();
        r.stdin = process.stdio.stdin.clone();
        r.stdout = process.stdio.stdout.clone();
        r.stderr = process.stdio.stderr.clone();
        r.terminal = process.stdio.terminal;
        let status = match process.status() {
            Status::Created => ApiStatus::CREATED,
            // The freezer holds the whole cgroup: execs are paused with their container.
            Status::Running if container.is_paused() => ApiStatus::PAUSED,
            Status::Running => ApiStatus::RUNNING,
            Status::Stopped {
                exit_status,
                exited_at,
            } => {
                r.exit_status = exit_status;
                r.exited_at = MessageField::some(exited_at);
                ApiStatus::STOPPED
            }
        };
        r.status = EnumOrUnknown::new(status);
        Ok(r)
    }

    pub async fn pids(&self, id: &str) -> TaskResult<Vec<ProcessInfo>> {
        self.container(id)?;
        let pod = self.require_pod()?;
        let pids = pod.agent.list_processes(id).await?;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let mut p = ProcessInfo::new();
                p.pid = pid;
                p
            })
            .collect())
    }

    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> TaskResult<()> {
        let process = self.container(id)?.process(exec_id)?;
        if !process.stdio.terminal {
            return Err(TaskError::FailedPrecondition(format!(
                "{} has no terminal",
                describe(&process)
            )));
        }
        self.require_pod()?
            .agent
            .tty_resize(id, exec_id, height, width)
            .await?;
        Ok(())
    }

    pub async fn close_io(&self, id: &str, exec_id: &str) -> TaskResult<()> {
        let process = self.container(id)?.process(exec_id)?;
        if let Some(stdin) = process.take_stdin() {
            if !stdin.close(STDIN_DRAIN_TIMEOUT).await {
                warn!(self.log, "CloseIO: the process did not take its remaining input in time; dropped it";
                    "container" => id, "exec" => exec_id, "waited" => ?STDIN_DRAIN_TIMEOUT);
            }
            if process.status() == Status::Running {
                self.require_pod()?.agent.close_stdin(id, exec_id).await?;
            }
        }
        Ok(())
    }
}

fn describe(p: &Process) -> String {
    if p.is_init() {
        format!("container {}", p.container_id)
    } else {
        format!("exec {} of {}", p.exec_id, p.container_id)
    }
}

fn stopped_or_default(p: &Process) -> (u32, Timestamp) {
    match p.status() {
        Status::Stopped {
            exit_status,
            exited_at,
        } => (exit_status, exited_at),
        // Never ran: containerd expects the same status runc reports for such a process.
        _ => (137, crate::events::now()),
    }
}
