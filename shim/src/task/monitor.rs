//! Exit reporting. One monitor per process waits for the agent to report the exit, then for
//! the process's output to be fully copied, and only then publishes TaskExit — so a client
//! that reacts to the exit has all the output. A watchdog per pod reports every process as
//! exited when the VM dies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use slog::{debug, info, warn};

use super::process::Process;
use super::{PodSlot, Shim};
use crate::events::now;
use crate::pod::Pod;

/// After an exit, how long output may keep flowing (a forked child can hold the pipe).
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How long the exits of a dead VM's processes may take to reach containerd.
const EVENT_FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// More containers than a pod has (the agent reports one entry per container).
const MAX_OOM_ENTRIES: usize = 4096;
/// The shortest time between two OOM waits.
const OOM_MIN_ROUND: Duration = Duration::from_secs(1);
/// Pause before asking again after a failed or refused OOM wait.
const OOM_RETRY: Duration = Duration::from_secs(1);
/// Reported for processes whose VM died under them (like a SIGKILL'd process: 128 + 9).
pub const VM_DIED_EXIT_STATUS: u32 = 137;

impl Shim {
    pub(super) fn spawn_exit_monitor(self: &Arc<Self>, pod: Arc<Pod>, process: Arc<Process>) {
        let shim = self.clone();
        tokio::spawn(async move {
            let status = match pod
                .agent
                .wait_process(&process.container_id, &process.exec_id)
                .await
            {
                Ok(exit) => {
                    // Before the exit: containerd's CRI then reports the container
                    // OOMKilled, whichever event it handles first.
                    shim.report_oom(&process.container_id, exit.oom_kills).await;
                    u32::try_from(exit.status).unwrap_or(255)
                }
                Err(e) => {
                    warn!(shim.log, "lost track of a process"; "container" => &process.container_id,
                          "exec" => &process.exec_id, "error" => %e);
                    VM_DIED_EXIT_STATUS
                }
            };
            if let Some(mut outputs) = process.take_outputs() {
                if tokio::time::timeout(OUTPUT_DRAIN_LIMIT, outputs.done())
                    .await
                    .is_err()
                {
                    warn!(shim.log, "output still open long after exit; closing it"; "container" => &process.container_id,
                          "exec" => &process.exec_id);
                }
            }
            drop(process.take_stdin());
            shim.finish(&process, status).await;
        });
    }

    /// Publishes TaskOOM as the guest counts OOM kills, for the pod's life: also for a
    /// process OOM-killed while its container's init lives on (the exit monitors report
    /// the rest before each exit). Ends when the VM does.
    pub(super) fn spawn_oom_watch(self: &Arc<Self>, pod: Arc<Pod>) {
        let shim = self.clone();
        tokio::spawn(async move {
            let mut vm_exited = pod.vm.exited();
            let mut known: HashMap<String, u64> = HashMap::new();
            loop {
                // A guest that answers at once, every time, gets one round a second: it
                // cannot make the shim spin or flood containerd with events.
                let round = tokio::time::Instant::now() + OOM_MIN_ROUND;
                let counts = tokio::select! {
                    r = pod.agent.wait_oom_kills(known.clone()) => r,
                    _ = vm_exited.wait_for(Option::is_some) => return,
                };
                match counts {
                    // Guest data: as many entries as the pod has containers, else ignored.
                    Ok(counts) if counts.len() <= MAX_OOM_ENTRIES => {
                        for (id, n) in &counts {
                            if known.get(id) != Some(n) {
                                shim.report_oom(id, *n).await;
                            }
                        }
                        known = counts;
                        tokio::time::sleep_until(round).await;
                    }
                    Ok(counts) => {
                        warn!(shim.log, "the guest reported OOM counts for too many containers";
                              "entries" => counts.len());
                        tokio::time::sleep(OOM_RETRY).await;
                    }
                    Err(e) => {
                        debug!(shim.log, "waiting for OOM kills"; "error" => %e);
                        tokio::time::sleep(OOM_RETRY).await;
                    }
                }
            }
        });
    }

    /// Publishes TaskOOM if the container's cgroup counted OOM kills not yet reported.
    async fn report_oom(&self, container_id: &str, oom_kills: u64) {
        let Ok(container) = self.container(container_id) else {
            return;
        };
        if container.note_oom_kills(oom_kills) {
            info!(self.log, "the guest OOM-killed in the container"; "container" => container_id,
                  "oom_kills" => oom_kills);
            let mut ev = TaskOOM::new();
            ev.container_id = container_id.to_owned();
            self.publisher
                .publish(TASK_OOM_EVENT_TOPIC, Box::new(ev))
                .await;
        }
    }

    /// Marks the process stopped and publishes TaskExit, once.
    pub(super) async fn finish(&self, process: &Process, status: u32) {
        let at = now();
        if !process.set_stopped(status, at.clone()) {
            return;
        }
        let mut ev = TaskExit::new();
        ev.container_id = process.container_id.clone();
        ev.id = process.event_id().to_string();
        ev.pid = process.guest_pid();
        ev.exit_status = status;
        ev.exited_at = MessageField::some(at);
        self.publisher
            .publish(TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub(super) fn spawn_vm_watchdog(self: &Arc<Self>, pod: Arc<Pod>) {
        let shim = self.clone();
        let mut exited = pod.vm.exited();
        tokio::spawn(async move {
            let Ok(exit) = exited.wait_for(Option::is_some).await.map(|e| e.clone()) else {
                return;
            };
            let Some(exit) = exit else { return };
            if exit.requested {
                return;
            }
            warn!(shim.log, "pod VM ended unexpectedly"; "sandbox" => &pod.id, "how" => &exit.description,
                  "diagnostics" => pod.vm.diagnostics());
            shim.finish_all(VM_DIED_EXIT_STATUS).await;
            // Nothing can run in this pod any more: make sure containerd has heard, then
            // exit so that its cleanup (`delete`) takes over. Later calls for the pod's
            // containers then see a dead shim rather than hanging.
            shim.publisher.flush(EVENT_FLUSH_LIMIT).await;
            // The helpers, the pod directory and the pod cgroup go now, not with the shim.
            pod.shutdown().await;
            if shim.sandbox_vm_died() {
                // WaitSandbox tells containerd; StopSandbox and ShutdownSandbox follow.
                if let Ok(mut slot) = shim.pod.lock() {
                    *slot = PodSlot::Gone;
                }
                return;
            }
            info!(
                shim.log,
                "all processes of the dead VM reported exited; shim exiting"
            );
            if let Ok(mut slot) = shim.pod.lock() {
                *slot = PodSlot::Gone;
            }
            shim.request_exit();
        });
    }
}
