//! Containers in the guest, built with youki's `libcontainer`.
//!
//! The agent keeps one record per container: its phase, its init process and its exec
//! processes. Creating processes goes through the fork-safe [`crate::helper`]; start, kill and
//! delete do not fork and run on tokio's blocking pool. Exits come from [`crate::reaper`].

pub mod cgroup;
mod control;
mod create;
pub mod freezer;
mod guest_devices;
pub mod ids;
pub mod layout;
mod lifecycle;
mod oom_watch;
mod pod_limits;
mod record;
pub mod spec;
pub mod stats;
pub mod sysctl;
mod update;
pub mod volume_mirror;
mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use slog::Logger;
use thiserror::Error;
use tokio_vsock::VsockStream;

use crate::helper::{HelperError, HelperLauncher};
use crate::reaper::{ExitRegistry, ReaperError};
use crate::stdio::{RegistryError, StdioError, StreamRegistry};

pub use layout::Layout;
pub use record::Process;
use record::Slot;

/// The host side of a stdio stream.
pub type HostStream = VsockStream;

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("exec {exec_id} not found in container {container_id}")]
    ExecNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("exec {exec_id} already exists in container {container_id}")]
    ExecAlreadyExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} is still being created")]
    Busy(String),
    #[error("container {0} was already started")]
    AlreadyStarted(String),
    #[error("container {0} has not been started")]
    NotStarted(String),
    #[error("container {0} has stopped")]
    Stopped(String),
    #[error("container {0} is paused; resume it first")]
    Paused(String),
    #[error("root.path {0:?} does not exist in the guest (is the shared directory mounted?)")]
    RootfsMissing(std::path::PathBuf),
    #[error("signal {0} is not a valid signal number")]
    InvalidSignal(u32),
    #[error("terminal size {rows}x{cols} is out of range")]
    InvalidSize { rows: u32, cols: u32 },
    #[error(transparent)]
    InvalidId(#[from] ids::IdError),
    #[error(transparent)]
    InvalidSpec(#[from] spec::SpecError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Streams(#[from] RegistryError),
    #[error("creating the process: {0}")]
    Helper(#[from] HelperError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Freezer(#[from] freezer::FreezerError),
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
    #[error("applying the new resources: {0}")]
    Update(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Signal(#[from] ReaperError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("libcontainer: {0}")]
    Libcontainer(#[source] libcontainer::error::LibcontainerError),
    #[error("the exit status of pid {0} was lost")]
    ExitLost(i32),
    #[error(transparent)]
    Volume(#[from] volume_mirror::MirrorError),
    #[error(
        "the container's memory limit ({limit} bytes) is too small for it to start: it was \
         OOM-killed while starting ({source}); raise the limit"
    )]
    MemoryTooSmall {
        limit: i64,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// All containers of the sandbox.
pub struct Containers {
    layout: Layout,
    exits: Arc<ExitRegistry>,
    streams: Arc<StreamRegistry<HostStream>>,
    launcher: HelperLauncher,
    slots: Mutex<HashMap<String, Slot>>,
    /// Held while a volume copy is synced: two interleaved syncs could undo each other.
    volume_sync: tokio::sync::Mutex<()>,
    /// Started by the first WaitOomKills once the pod cgroup exists.
    oom_watch: Mutex<Option<Arc<oom_watch::OomWatch>>>,
    log: Logger,
}

impl Containers {
    pub fn new(
        layout: Layout,
        exits: Arc<ExitRegistry>,
        streams: Arc<StreamRegistry<HostStream>>,
        log: Logger,
    ) -> Self {
        let launcher = HelperLauncher::new(Arc::clone(&exits), log.clone());
        Self {
            layout,
            exits,
            streams,
            launcher,
            slots: Mutex::new(HashMap::new()),
            volume_sync: tokio::sync::Mutex::new(()),
            oom_watch: Mutex::new(None),
            log,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Records are replaced whole, never left half-updated: a poisoned map is consistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pod cgroup's OOM watch; none (callers then wait out their timeout) if inotify
    /// cannot watch it yet.
    fn oom_watch(&self) -> Option<Arc<oom_watch::OomWatch>> {
        let mut slot = self
            .oom_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let pod = self.layout.cgroup_root.join(spec::CGROUP_PARENT);
            match oom_watch::OomWatch::start(&pod) {
                Ok(w) => *slot = Some(w),
                Err(e) => slog::debug!(self.log, "no OOM watch yet"; "error" => %e),
            }
        }
        slot.clone()
    }

    /// Starts a helper ahead of the pod's first container (see `helper::launch`).
    pub fn prepare_helper(&self) {
        self.launcher.prepare_spare();
    }

    /// Ids of the containers that are fully created.
    pub fn ids(&self) -> Vec<String> {
        self.slots()
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Ready(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }
}
