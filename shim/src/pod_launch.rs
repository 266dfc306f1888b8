//! How a shim gets its pod: a [`PodLauncher`] turns a [`PodPlan`] (from the first Create
//! of a pod, or from the Sandbox API's CreateSandbox) into a running [`Pod`]. [`VmLauncher`] is the real one (configuration, sizing, cgroup, VM,
//! agent); the task state machine's unit tests give the shim a fake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use slog::{Logger, info};

use crate::config::Config;
use crate::pod::Pod;
use crate::pod_cgroup;
use crate::sizing;
use crate::task::{TaskError, TaskResult};

/// Why a pod without a network namespace of its own is refused.
pub const HOST_NETWORK_REFUSED: &str = "husk runs each pod in its own VM with its own network stack: \
     host-network pods (hostNetwork: true, ctr --net-host) are not supported; use another \
     RuntimeClass for them";

/// What a pod VM is booted from. [`PodPlan::from_sandbox_spec`] reads it from the first
/// container's OCI spec (CRI's pause container, or the container of `ctr run`); the
/// Sandbox API reads it from CRI's pod config ([`crate::sandbox`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlan {
    /// The pod's id (CRI's sandbox id).
    pub group: String,
    /// The husk configuration file the runtime options name, if any.
    pub config_path: Option<String>,
    pub hostname: String,
    /// CRI's sandbox-sizing annotations ([`sizing`]).
    pub annotations: HashMap<String, String>,
    /// The pod's cgroup as containerd names it (cgroupfs path or systemd slice triple).
    pub cgroups_path: Option<String>,
    /// The network namespace CNI set up; none when the runtime was to create one (`ctr
    /// run`), in which case the VM gets no network.
    pub netns: Option<PathBuf>,
}

impl PodPlan {
    /// The plan of pod `group` whose first container is `req`, with OCI spec `spec`.
    /// Refuses pods that share the host's network, PID or IPC namespace.
    pub fn from_sandbox_spec(
        group: &str,
        req: &CreateTaskRequest,
        spec: &Spec,
    ) -> TaskResult<Self> {
        if !has_namespace(spec, LinuxNamespaceType::Network) {
            return Err(TaskError::InvalidArgument(HOST_NETWORK_REFUSED.into()));
        }
        for (typ, what) in [
            (LinuxNamespaceType::Pid, "hostPID"),
            (LinuxNamespaceType::Ipc, "hostIPC"),
        ] {
            if !has_namespace(spec, typ) {
                return Err(host_namespace_refused(what));
            }
        }
        Ok(Self {
            group: group.to_owned(),
            config_path: crate::runtime_options::config_path(req.options.as_ref()),
            hostname: spec
                .hostname()
                .clone()
                .unwrap_or_else(|| group.chars().take(12).collect()),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroups_path: spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .and_then(|p| p.to_str())
                .map(str::to_owned),
            netns: network_namespace_path(spec),
        })
    }
}

/// Why a pod sharing the node's PID or IPC namespace (`what`) is refused.
pub fn host_namespace_refused(what: &str) -> TaskError {
    TaskError::InvalidArgument(format!(
        "husk runs each pod in its own VM with its own kernel: {what} pods see the VM's, not \
         the node's, so they are not supported; use another RuntimeClass for them"
    ))
}

#[async_trait]
pub trait PodLauncher: Send + Sync {
    /// Boots the pod `plan` describes.
    async fn launch(&self, plan: &PodPlan, log: &Logger) -> TaskResult<Pod>;
}

/// Boots a VM for the pod, as the husk configuration says.
pub struct VmLauncher;

#[async_trait]
impl PodLauncher for VmLauncher {
    async fn launch(&self, plan: &PodPlan, log: &Logger) -> TaskResult<Pod> {
        let (config, path) = Config::resolve(plan.config_path.as_deref().map(Path::new))
            .map_err(TaskError::invalid)?;
        info!(log, "booting pod VM"; "sandbox" => &plan.group, "config" => %path.display());
        let size = sizing::pod_size(&plan.annotations, &config.hypervisor, sizing::host_cpus());
        let cgroup = pod_cgroup::path_for(
            plan.cgroups_path.as_deref(),
            &config.runtime.cgroup_parent,
            &plan.group,
        )
        .map_err(TaskError::invalid)?;
        Pod::boot(
            &plan.group,
            &plan.hostname,
            &cgroup,
            plan.netns.as_deref(),
            &config,
            &size,
            log,
        )
        .await
        .map_err(|e| TaskError::PodStart(Box::new(e)))
    }
}

/// The network namespace CNI set up for the pod (CRI names it in the sandbox spec).
fn network_namespace_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// A pod that shares the host's network has no network namespace in its sandbox spec.
/// True if the pod's sandbox asks for a namespace of type `typ` of its own: containerd
/// leaves it out for hostNetwork, hostPID and hostIPC pods.
fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}
