//! The containerd Task API (v2, also served as v3) over one pod.
//!
//! `Shim` holds the pod and its containers; `create`, `lifecycle`, `exec` and `monitor`
//! implement the operations; `service` maps the ttrpc trait onto them.

mod container;
mod control;
mod create;
mod error;
mod exec;
mod lifecycle;
mod metrics;
mod monitor;
mod process;
mod sandbox;
mod service;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod oom_tests;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use slog::Logger;
use tokio::sync::watch;

use crate::events::Publisher;
use crate::pod::Pod;
use crate::pod_launch::PodLauncher;
use crate::sandbox::SandboxRecord;
pub use container::Container;
pub use error::{TaskError, TaskResult};
pub use process::{Process, Status};
pub use sandbox::{STATE_NOT_READY, STATE_READY, SandboxState};
pub use service::task_services;

/// Whether this shim still has (or may still get) a pod.
enum PodSlot {
    Empty,
    Running(Arc<Pod>),
    /// Torn down: the shim is exiting and takes no new containers.
    Gone,
}

/// Lock order (take them in this order, never the other way): `boot` (async; held across
/// awaits while a pod boots or tears down and while a Create registers its container) →
/// `pod` → `containers` → a container's exec table → a process's state. The std mutexes
/// are never held across an await.
pub struct Shim {
    pub namespace: String,
    pub log: Logger,
    pub publisher: Publisher,
    /// The socket containerd reaches this shim on (recorded for crash cleanup).
    pub socket: PathBuf,
    launcher: Arc<dyn PodLauncher>,
    pod: Mutex<PodSlot>,
    /// Serializes pod boot and teardown.
    boot: tokio::sync::Mutex<()>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// The pod, when containerd's Sandbox API manages it (CreateSandbox).
    sandbox: Mutex<Option<SandboxRecord>>,
    /// The husk configuration file containerd's runtime options named at `start`.
    config_path: Option<String>,
    /// When this shim was made: the first mark of its pod's start phases.
    started: std::time::SystemTime,
    exit: watch::Sender<bool>,
}

impl Shim {
    pub fn new(
        namespace: String,
        socket: PathBuf,
        publisher: Publisher,
        launcher: Arc<dyn PodLauncher>,
        log: Logger,
    ) -> Arc<Self> {
        Self::with_config_path(namespace, socket, publisher, launcher, None, log)
    }

    /// A shim whose Sandbox API pods use the configuration file `config_path` (the
    /// runtime options' `ConfigPath`, which only `start` hears of).
    pub fn with_config_path(
        namespace: String,
        socket: PathBuf,
        publisher: Publisher,
        launcher: Arc<dyn PodLauncher>,
        config_path: Option<String>,
        log: Logger,
    ) -> Arc<Self> {
        Arc::new(Self {
            namespace,
            log,
            publisher,
            socket,
            launcher,
            pod: Mutex::new(PodSlot::Empty),
            boot: tokio::sync::Mutex::new(()),
            containers: Mutex::new(HashMap::new()),
            sandbox: Mutex::new(None),
            config_path,
            started: std::time::SystemTime::now(),
            exit: watch::channel(false).0,
        })
    }

    /// Becomes true when the shim should exit (last container deleted, Create of the first
    /// container failed, or Shutdown with nothing left).
    pub fn exit_requested(&self) -> watch::Receiver<bool> {
        self.exit.subscribe()
    }

    fn request_exit(&self) {
        // send_replace: stored even while nobody is subscribed yet.
        self.exit.send_replace(true);
    }

    fn pod(&self) -> Option<Arc<Pod>> {
        match &*self.pod.lock().ok()? {
            PodSlot::Running(p) => Some(p.clone()),
            _ => None,
        }
    }

    fn require_pod(&self) -> TaskResult<Arc<Pod>> {
        self.pod()
            .ok_or_else(|| TaskError::FailedPrecondition("the pod VM is not running".into()))
    }

    fn container(&self, id: &str) -> TaskResult<Arc<Container>> {
        self.containers
            .lock()
            .map_err(|_| TaskError::Internal("container table poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("container {id} not found")))
    }

    fn container_count(&self) -> usize {
        self.containers.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn config_path(&self) -> Option<String> {
        self.config_path.clone()
    }

    /// The guest pid of the process whose namespaces the pod's containers join: the pause
    /// container's (CRI's sandbox container, or a Sandbox API pod's pause process).
    fn sandbox_guest_pid(&self) -> Option<u32> {
        let containers = self.containers.lock().ok()?;
        containers
            .values()
            .find(|c| c.is_sandbox)
            .map(|c| c.init.guest_pid())
            .filter(|p| *p != 0)
            .or_else(|| {
                drop(containers);
                self.pause_guest_pid()
            })
    }

    /// The running pod, taken out: the slot says Gone from now on (no new containers).
    fn take_pod(&self) -> Option<Arc<Pod>> {
        match std::mem::replace(&mut *self.pod.lock().ok()?, PodSlot::Gone) {
            PodSlot::Running(p) => Some(p),
            _ => None,
        }
    }

    /// Every process of every container is reported ended with `status`, its IO cut:
    /// the VM they ran in is gone.
    async fn finish_all(&self, status: u32) {
        let processes: Vec<Arc<Process>> = match self.containers.lock() {
            Ok(c) => c.values().flat_map(|c| c.all_processes()).collect(),
            Err(_) => Vec::new(),
        };
        for p in processes {
            p.abort_io();
            self.finish(&p, status).await;
        }
    }

    /// Tears the pod down if it is empty, and asks the shim to exit. A Sandbox API pod
    /// stays: StopSandbox and ShutdownSandbox end it.
    async fn shutdown_if_empty(&self) {
        let _guard = self.boot.lock().await;
        if self.container_count() > 0 || self.sandbox_managed() {
            return;
        }
        let pod = self.take_pod();
        if let Some(pod) = pod {
            pod.shutdown().await;
        }
        self.request_exit();
    }

    /// Host pid of the VMM, or 0 before the pod boots.
    pub fn vmm_pid(&self) -> u32 {
        self.pod().map(|p| p.vm.pid()).unwrap_or(0)
    }

    /// Shutdown RPC: exit if nothing is left to serve.
    pub async fn shutdown_if_idle(&self) {
        if self.container_count() == 0 {
            self.shutdown_if_empty().await;
        }
    }

    /// Stops everything (SIGTERM to the shim): pod down, then exit.
    pub async fn shutdown_all(&self) {
        if let Ok(mut c) = self.containers.lock() {
            c.clear();
        }
        if let Ok(mut s) = self.sandbox.lock() {
            *s = None;
        }
        self.shutdown_if_empty().await;
    }
}
