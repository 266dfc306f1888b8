//! Start, signal, wait, list, terminal control and removal of containers and processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::container::Container as LcContainer;
use libcontainer::error::LibcontainerError;
use slog::{debug, warn};

use super::record::{ExecSlot, Phase, Process, Slot};
use super::{ContainerError, Containers, cgroup, record, volume_mirror};

/// RemoveContainer waits this long for the killed processes to exit.
pub const REMOVE_WAIT: Duration = Duration::from_secs(10);
/// Highest valid signal number (SIGRTMAX on Linux).
const MAX_SIGNAL: u32 = 64;

impl Containers {
    /// Finds a process: the init when `exec_id` is empty.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        let mut slots = self.slots();
        let container = record::ready(&mut slots, id)?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&container.init));
        }
        match container.execs.get(exec_id) {
            Some(ExecSlot::Ready { process, .. }) => Ok(Arc::clone(process)),
            _ => Err(ContainerError::ExecNotFound {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }),
        }
    }

    /// Lets the created init run its process.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        {
            let mut slots = self.slots();
            let container = record::ready(&mut slots, id)?;
            if container.phase != Phase::Created {
                return Err(ContainerError::AlreadyStarted(id.to_owned()));
            }
            if container.init.exit_status().is_some() {
                return Err(ContainerError::Stopped(id.to_owned()));
            }
            container.phase = Phase::Starting;
        }
        let state_dir = self.layout.state_dir(id);
        let started = tokio::task::spawn_blocking(move || {
            LcContainer::load(state_dir).and_then(|mut c| c.start())
        })
        .await;
        let result = match started {
            Ok(Ok(())) => Ok(()),
            Ok(Err(LibcontainerError::IncorrectStatus(_))) => {
                Err(ContainerError::Stopped(id.to_owned()))
            }
            Ok(Err(e)) => Err(ContainerError::Libcontainer(e)),
            Err(e) => Err(e.into()),
        };
        if let Some(Slot::Ready(c)) = self.slots().get_mut(id) {
            c.phase = if result.is_ok() {
                Phase::Started
            } else {
                Phase::Created
            };
        }
        if result.is_ok() {
            debug!(self.log, "container started"; "container" => id);
        }
        result
    }

    /// Signals one process, or with `all` every process in the container's cgroup. Signalling
    /// a process that has exited succeeds and does nothing.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let signo = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=MAX_SIGNAL as i32).contains(s))
            .ok_or(ContainerError::InvalidSignal(signal))?;
        let process = self.process(id, exec_id)?;
        if all {
            cgroup::signal_all(&self.layout.cgroup_dir(id), signo)?;
        } else {
            self.exits
                .signal_if_running(process.pid, process.exit_receiver(), signo)?;
        }
        Ok(())
    }

    /// Waits until the process exits; its shell-style status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        self.process(id, exec_id)?.wait().await
    }

    /// Pids in the container's cgroup.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        self.process(id, "")?;
        Ok(cgroup::procs(&self.layout.cgroup_dir(id))?)
    }

    pub fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ContainerError> {
        let size = |v: u32| u16::try_from(v).ok().filter(|v| *v > 0);
        let (Some(r), Some(c)) = (size(rows), size(cols)) else {
            return Err(ContainerError::InvalidSize { rows, cols });
        };
        // The master stays open after the process exits, so a late resize is harmless.
        Ok(self.process(id, exec_id)?.io.resize(r, c)?)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.process(id, exec_id)?.io.close_stdin();
        Ok(())
    }

    /// Kills what is left of the container, waits (bounded) for it, and deletes its
    /// libcontainer state, cgroup, bundle and unclaimed streams.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let init = self.process(id, "")?;
        let cgroup_dir = self.layout.cgroup_dir(id);
        cgroup::kill_all(&cgroup_dir)?;
        if tokio::time::timeout(REMOVE_WAIT, init.wait())
            .await
            .is_err()
        {
            warn!(self.log, "container init survived SIGKILL"; "container" => id, "pid" => init.pid);
        }
        let state_dir = self.layout.state_dir(id);
        let bundle = self.layout.bundle(id);
        tokio::task::spawn_blocking(move || -> Result<(), ContainerError> {
            match LcContainer::load(state_dir) {
                Ok(mut c) => c.delete(true).map_err(ContainerError::Libcontainer)?,
                // No state: a previous remove got this far already.
                Err(LibcontainerError::State(_) | LibcontainerError::NoDirectory) => {}
                Err(e) => return Err(ContainerError::Libcontainer(e)),
            }
            volume_mirror::remove_all(&bundle);
            match std::fs::remove_dir_all(&bundle) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ContainerError::Io {
                    what: format!("removing {}", bundle.display()),
                    source,
                }),
            }
        })
        .await??;
        self.streams.discard_container(id, Instant::now());
        self.slots().remove(id);
        debug!(self.log, "container removed"; "container" => id);
        Ok(())
    }

    /// SIGKILLs every container and waits (bounded) for their inits: the sandbox is going away.
    pub async fn kill_everything(&self, wait: Duration) {
        let inits: Vec<Arc<Process>> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                if let Err(e) = cgroup::kill_all(&self.layout.cgroup_dir(&id)) {
                    warn!(self.log, "killing container failed"; "container" => &id, "error" => %e);
                }
                self.process(&id, "").ok()
            })
            .collect();
        let all_exited = futures_join_all(inits);
        if tokio::time::timeout(wait, all_exited).await.is_err() {
            warn!(self.log, "some containers did not exit in time");
        }
    }
}

async fn futures_join_all(processes: Vec<Arc<Process>>) {
    for p in processes {
        let _ = p.wait().await;
    }
}
