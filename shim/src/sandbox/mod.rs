//! containerd 2.x's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`): with
//! `sandboxer = "shim"`, containerd's CRI asks the shim itself for the pod instead of
//! creating a pause container. CreateSandbox reads CRI's pod config ([`pod_config`]),
//! StartSandbox boots the VM and the pod's pause process ([`pause`]) and writes the pod's
//! files ([`pod_files`]); the pod then lives until StopSandbox, whatever happens to its
//! containers, and the shim until ShutdownSandbox. [`service`] maps the ttrpc service onto
//! the shim (`crate::task::Shim`).

pub mod pause;
pub mod pod_config;
pub mod pod_files;
pub mod service;

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

pub use pod_config::{PodConfigError, PodFiles, PodRequest};
pub use pod_files::{PodFileDirs, PodFilesError};

/// containerd's name of the husk runtime.
const RUNTIME_TYPE: &str = "io.containerd.husk.v2";

/// How a Sandbox API pod ended: WaitSandbox's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxExit {
    pub status: u32,
    pub at: Timestamp,
}

/// Where a Sandbox API pod is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// CreateSandbox accepted it; nothing runs yet.
    Created,
    /// StartSandbox booted it.
    Ready {
        /// The VMM's host pid (what containerd records as the sandbox's pid).
        pid: u32,
        /// The guest pid of the pause process, whose namespaces the containers join.
        pause_pid: u32,
        /// The pod files' directory on the host.
        files: PathBuf,
    },
    /// Stopped (StopSandbox, or its VM or pause process ended).
    Stopped,
}

/// The pod the Sandbox API manages in this shim.
pub struct SandboxRecord {
    pub id: String,
    pub request: PodRequest,
    pub created_at: Timestamp,
    pub phase: Phase,
    exit: watch::Sender<Option<SandboxExit>>,
}

impl SandboxRecord {
    pub fn new(id: &str, request: PodRequest) -> Self {
        Self {
            id: id.to_owned(),
            request,
            created_at: crate::events::now(),
            phase: Phase::Created,
            exit: watch::channel(None).0,
        }
    }

    /// The exit, once the pod ended.
    pub fn exit(&self) -> Option<SandboxExit> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit (WaitSandbox).
    pub fn exits(&self) -> watch::Receiver<Option<SandboxExit>> {
        self.exit.subscribe()
    }

    /// Records the pod's end once; the first cause wins.
    pub fn set_exited(&mut self, status: u32) {
        self.phase = Phase::Stopped;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(SandboxExit {
                status,
                at: crate::events::now(),
            });
            true
        });
    }

    /// The guest pid of the pause process, while the pod runs.
    pub fn pause_pid(&self) -> Option<u32> {
        match &self.phase {
            Phase::Ready { pause_pid, .. } => Some(*pause_pid),
            _ => None,
        }
    }

    /// PodSandboxStatus's verbose `info`, shaped like containerd's for a pause-container
    /// pod (`crictl inspectp` reads it): the VMM's pid, whether the pod runs, and the pod as
    /// a runtime spec (hostname, namespaces with CNI's network namespace, cgroup).
    pub fn verbose_info(&self, pid: u32, ready: bool) -> HashMap<String, String> {
        let plan = &self.request.plan;
        let mut namespaces = vec![serde_json::json!({"type": "network", "path": plan.netns})];
        namespaces.extend(["pid", "ipc", "uts", "mount"].map(|t| serde_json::json!({"type": t})));
        let info = serde_json::json!({
            "pid": pid,
            "processStatus": if ready { "running" } else { "stopped" },
            "netNamespaceClosed": false,
            "runtimeType": RUNTIME_TYPE,
            "sandboxer": "shim",
            "runtimeSpec": {
                "ociVersion": "1.0.2",
                "hostname": plan.hostname,
                "annotations": plan.annotations,
                "linux": {"namespaces": namespaces, "cgroupsPath": plan.cgroups_path},
            },
        });
        HashMap::from([("info".to_owned(), info.to_string())])
    }

    /// The pod files' directory, while the pod runs.
    pub fn files(&self) -> Option<PathBuf> {
        match &self.phase {
            Phase::Ready { files, .. } => Some(files.clone()),
            _ => None,
        }
    }
}
