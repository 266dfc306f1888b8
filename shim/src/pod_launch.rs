//! How a shim gets its pod: a [`PodLauncher`] turns the first Create of a pod into a
//! running [`Pod`]. [`VmLauncher`] is the real one (configuration, sizing, cgroup, VM,
//! agent); the task state machine's unit tests give the shim a fake.

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

#[async_trait]
pub trait PodLauncher: Send + Sync {
    /// Boots pod `group` for its first container: `req`, whose OCI spec is `spec`.
    async fn launch(
        &self,
        group: &str,
        req: &CreateTaskRequest,
        spec: &Spec,
        log: &Logger,
    ) -> TaskResult<Pod>;
}

/// Boots a VM for the pod, as the husk configuration says.
pub struct VmLauncher;

#[async_trait]
impl PodLauncher for VmLauncher {
    async fn launch(
        &self,
        group: &str,
        req: &CreateTaskRequest,
        spec: &Spec,
        log: &Logger,
    ) -> TaskResult<Pod> {
        let explicit = crate::runtime_options::config_path(req.options.as_ref());
        let (config, path) =
            Config::resolve(explicit.as_deref().map(Path::new)).map_err(TaskError::invalid)?;
        info!(log, "booting pod VM"; "sandbox" => group, "config" => %path.display());
        if !has_namespace(spec, LinuxNamespaceType::Network) {
            return Err(TaskError::InvalidArgument(HOST_NETWORK_REFUSED.into()));
        }
        for (typ, what) in [
            (LinuxNamespaceType::Pid, "hostPID"),
            (LinuxNamespaceType::Ipc, "hostIPC"),
        ] {
            if !has_namespace(spec, typ) {
                return Err(TaskError::InvalidArgument(format!(
                    "husk runs each pod in its own VM with its own kernel: {what} pods see the \
                     VM's, not the node's, so they are not supported; use another \
                     RuntimeClass for them"
                )));
            }
        }
        let hostname = spec
            .hostname()
            .clone()
            .unwrap_or_else(|| group.chars().take(12).collect());
        let annotations = spec.annotations().clone().unwrap_or_default();
        let size = sizing::pod_size(&annotations, &config.hypervisor, sizing::host_cpus());
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let cgroup = pod_cgroup::path_for(
            cgroups_path.as_deref().and_then(Path::to_str),
            &config.runtime.cgroup_parent,
            group,
        )
        .map_err(TaskError::invalid)?;
        let netns = network_namespace_path(spec);
        Pod::boot(
            group,
            &hostname,
            &cgroup,
            netns.as_deref(),
            &config,
            &size,
            log,
        )
        .await
        .map_err(|e| TaskError::PodStart(Box::new(e)))
    }
}

/// The network namespace CNI set up for the pod (CRI names it in the sandbox spec); none
/// when the runtime was to create one (`ctr run`), in which case the VM gets no network.
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
