//! The Sandbox API's operations on the shim ([`crate::sandbox`] has the pod's config, files
//! and pause spec; `crate::sandbox::service` the ttrpc side). A Sandbox API pod is booted
//! by StartSandbox, not by a first container, and stays until StopSandbox.

use std::sync::Arc;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::sandbox_api::CreateSandboxRequest;
use slog::{info, warn};

use super::error::{TaskError, TaskResult};
use super::monitor::VM_DIED_EXIT_STATUS;
use super::{PodSlot, Shim};
use crate::container_files::RootfsSource;
use crate::ids;
use crate::pod::Pod;
use crate::sandbox::{Phase, SandboxExit, SandboxRecord, pause, pod_config};
use crate::start_phases::Mark;
use crate::stdio::StdioPaths;

/// What SandboxStatus reports (CRI's PodSandboxState names).
pub const STATE_READY: &str = "SANDBOX_READY";
pub const STATE_NOT_READY: &str = "SANDBOX_NOTREADY";

/// SandboxStatus's answer.
pub struct SandboxState {
    pub pid: u32,
    pub state: &'static str,
    pub created_at: Timestamp,
    pub exited_at: Option<Timestamp>,
    /// Verbose details (PodSandboxStatus `info`), when asked for.
    pub info: std::collections::HashMap<String, String>,
}

impl Shim {
    /// True once CreateSandbox made this shim's pod a Sandbox API pod.
    pub(super) fn sandbox_managed(&self) -> bool {
        self.sandbox.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    fn with_sandbox<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxRecord) -> TaskResult<T>,
    ) -> TaskResult<T> {
        let mut slot = self
            .sandbox
            .lock()
            .map_err(|_| TaskError::Internal("sandbox record poisoned".into()))?;
        match slot.as_mut() {
            Some(r) if r.id == id => f(r),
            _ => Err(TaskError::NotFound(format!("sandbox {id} not found"))),
        }
    }

    /// CreateSandbox: records the pod; nothing runs until StartSandbox.
    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> TaskResult<()> {
        let id = req.sandbox_id.as_str();
        ids::validate("sandbox id", id).map_err(TaskError::invalid)?;
        let _guard = self.boot.lock().await;
        let options = req.options.as_ref();
        let request = pod_config::pod_request(id, options, &req.netns_path, self.config_path())
            .map_err(TaskError::invalid)?;
        let mut slot = self
            .sandbox
            .lock()
            .map_err(|_| TaskError::Internal("sandbox record poisoned".into()))?;
        if slot.is_some() || !matches!(self.pod.lock().as_deref(), Ok(PodSlot::Empty)) {
            return Err(TaskError::AlreadyExists(format!(
                "this shim already serves a pod; sandbox {id} needs its own"
            )));
        }
        info!(self.log, "sandbox created"; "sandbox" => id, "hostname" => &request.plan.hostname);
        *slot = Some(SandboxRecord::new(id, request));
        Ok(())
    }

    /// StartSandbox: boots the VM, writes the pod's files and starts its pause process.
    /// Returns the VMM's pid and when the pod was created.
    pub async fn start_sandbox(self: &Arc<Self>, id: &str) -> TaskResult<(u32, Timestamp)> {
        let guard = self.boot.lock().await;
        let (request, created_at) = self.with_sandbox(id, |r| match r.phase {
            Phase::Created => Ok((r.request.clone(), r.created_at.clone())),
            _ => Err(TaskError::FailedPrecondition(format!(
                "sandbox {id} was already started"
            ))),
        })?;
        let begin = std::time::Instant::now();
        let pod = Arc::new(self.launcher.launch(&request.plan, &self.log).await?);
        pod.mark_start(Mark::ShimStarted, Some(self.started));
        let booted = begin.elapsed();
        match self.start_pause(&pod, id, &request, &begin).await {
            Ok((pause_pid, files)) => {
                if let Ok(mut slot) = self.pod.lock() {
                    *slot = PodSlot::Running(pod.clone());
                }
                self.with_sandbox(id, |r| {
                    r.phase = Phase::Ready {
                        pid: pod.vm.pid(),
                        pause_pid,
                        files,
                    };
                    Ok(())
                })?;
                drop(guard);
                self.spawn_vm_watchdog(pod.clone());
                self.spawn_oom_watch(pod.clone());
                pod.spawn_volume_sync();
                self.spawn_pause_monitor(pod.clone(), id);
                info!(self.log, "sandbox ready"; "sandbox" => id, "pause_pid" => pause_pid,
                      "boot_ms" => booted.as_millis(), "ready_ms" => begin.elapsed().as_millis());
                Ok((pod.vm.pid(), created_at))
            }
            Err(e) => {
                warn!(self.log, "starting the sandbox failed"; "sandbox" => id, "error" => %e);
                pod.shutdown().await;
                Err(e)
            }
        }
    }

    /// The pod's files and its pause container; returns the pause process's guest pid and
    /// the files' host directory.
    async fn start_pause(
        &self,
        pod: &Pod,
        id: &str,
        request: &pod_config::PodRequest,
        begin: &std::time::Instant,
    ) -> TaskResult<(u32, std::path::PathBuf)> {
        let since = |t: &std::time::Instant| t.elapsed().as_millis();
        let dirs = pod
            .host
            .write_pod_files(&request.files)
            .await
            .map_err(|e| TaskError::internal("writing the pod's files", e))?;
        pod.prepare_container_files(id, RootfsSource::Bind(dirs.pause_root.clone()), Vec::new())
            .await
            .map_err(|e| TaskError::internal("preparing the pause container's root", e))?;
        let files_at = since(begin);
        let spec = pause::guest_spec(id, &request.plan.hostname, &request.sysctls);
        let pid = pod
            .agent
            .create_container(id, spec, StdioPaths::default().for_agent())
            .await?;
        let created_at = since(begin);
        pod.agent.start_container(id).await?;
        info!(self.log, "pause process started"; "sandbox" => id, "files_ready_ms" => files_at,
              "created_ms" => created_at, "started_ms" => since(begin));
        Ok((pid, dirs.files))
    }

    /// Ends the sandbox when its pause process exits (it holds the pod's namespaces).
    fn spawn_pause_monitor(self: &Arc<Self>, pod: Arc<Pod>, id: &str) {
        let (shim, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            let status = match pod.agent.wait_process(&id, "").await {
                Ok(exit) => u32::try_from(exit.status).unwrap_or(255),
                // The VM went: its watchdog reports that.
                Err(_) => return,
            };
            let ended = shim.with_sandbox(&id, |r| {
                let running = matches!(r.phase, Phase::Ready { .. });
                if running {
                    r.set_exited(status);
                }
                Ok(running)
            });
            if ended.unwrap_or(false) {
                warn!(shim.log, "the pod's pause process exited"; "sandbox" => &id, "status" => status);
            }
        });
    }

    /// The guest pid of a Sandbox API pod's pause process.
    pub(super) fn pause_guest_pid(&self) -> Option<u32> {
        self.sandbox.lock().ok()?.as_ref()?.pause_pid()
    }

    /// The pod files' directory of a Sandbox API pod, for its containers' mounts.
    pub(super) fn pod_files_dir(&self) -> Option<std::path::PathBuf> {
        self.sandbox.lock().ok()?.as_ref()?.files()
    }

    /// StopSandbox: every process still running is reported killed, and the VM goes.
    /// Stopping a stopped sandbox does nothing.
    pub async fn stop_sandbox(&self, id: &str) -> TaskResult<()> {
        let _guard = self.boot.lock().await;
        let status = self.with_sandbox(id, |r| Ok(r.exit().map(|e| e.status).unwrap_or(0)))?;
        let pod = self.take_pod();
        self.with_sandbox(id, |r| {
            r.set_exited(status);
            Ok(())
        })?;
        let Some(pod) = pod else {
            return Ok(());
        };
        pod.shutdown().await;
        self.finish_all(VM_DIED_EXIT_STATUS).await;
        info!(self.log, "sandbox stopped"; "sandbox" => id);
        Ok(())
    }

    /// WaitSandbox: until the sandbox has stopped.
    pub async fn wait_sandbox(&self, id: &str) -> TaskResult<SandboxExit> {
        let mut exits = self.with_sandbox(id, |r| Ok(r.exits()))?;
        let exit = exits
            .wait_for(Option::is_some)
            .await
            .map(|e| e.clone())
            .map_err(|_| TaskError::NotFound(format!("sandbox {id} was shut down")))?;
        exit.ok_or_else(|| TaskError::Internal("sandbox exit missing".into()))
    }

    pub fn sandbox_status(&self, id: &str, verbose: bool) -> TaskResult<SandboxState> {
        self.with_sandbox(id, |r| {
            let exit = r.exit();
            let (pid, state) = match (&r.phase, &exit) {
                (Phase::Ready { pid, .. }, None) => (*pid, STATE_READY),
                (Phase::Ready { pid, .. }, Some(_)) => (*pid, STATE_NOT_READY),
                _ => (0, STATE_NOT_READY),
            };
            let info = if verbose {
                r.verbose_info(pid, state == STATE_READY)
            } else {
                Default::default()
            };
            Ok(SandboxState {
                pid,
                state,
                created_at: r.created_at.clone(),
                exited_at: exit.map(|e| e.at),
                info,
            })
        })
    }

    /// PingSandbox: the sandbox's VM is up.
    pub fn ping_sandbox(&self, id: &str) -> TaskResult<()> {
        self.with_sandbox(id, |_| Ok(()))?;
        let pod = self.require_pod()?;
        if pod.vm.exited().borrow().is_some() {
            return Err(TaskError::FailedPrecondition(format!(
                "the VM of sandbox {id} has ended"
            )));
        }
        Ok(())
    }

    /// ShutdownSandbox: stops what still runs, then the shim exits after replying. A shim
    /// whose CreateSandbox was refused has nothing to stop (containerd shuts it down all
    /// the same).
    pub async fn shutdown_sandbox(&self, id: &str) -> TaskResult<()> {
        let never_created = self.sandbox.lock().map(|s| s.is_none()).unwrap_or(false)
            && self.container_count() == 0
            && matches!(self.pod.lock().as_deref(), Ok(PodSlot::Empty));
        if never_created {
            info!(self.log, "shutting down without a sandbox"; "sandbox" => id);
            self.request_exit();
            return Ok(());
        }
        self.stop_sandbox(id).await?;
        if let Ok(mut slot) = self.sandbox.lock() {
            *slot = None;
        }
        if let Ok(mut c) = self.containers.lock() {
            c.clear();
        }
        info!(self.log, "sandbox shut down"; "sandbox" => id);
        self.request_exit();
        Ok(())
    }

    /// SandboxMetrics: the pod cgroup's figures in the guest, as containerd's cgroup v2
    /// metrics.
    pub async fn sandbox_metrics(&self, id: &str) -> TaskResult<Any> {
        self.with_sandbox(id, |_| Ok(()))?;
        let pod = self.require_pod()?;
        let figures = pod.agent.pod_stats().await?;
        super::metrics::to_any(&super::metrics::cgroup_v2_metrics(&figures)?)
    }

    /// The VM of a Sandbox API pod died: the sandbox has ended, the shim stays for
    /// containerd's StopSandbox and ShutdownSandbox.
    pub(super) fn sandbox_vm_died(&self) -> bool {
        let Ok(mut slot) = self.sandbox.lock() else {
            return false;
        };
        match slot.as_mut() {
            Some(r) => {
                r.set_exited(VM_DIED_EXIT_STATUS);
                true
            }
            None => false,
        }
    }
}
