//! New cgroup limits for a container that exists (task Update, CRI
//! UpdateContainerResources), applied by the libcgroups that created its cgroup.

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;

use super::{ContainerError, Containers, spec};

/// Largest `linux.resources` JSON accepted (CRI sends a few hundred bytes).
pub const MAX_RESOURCES_JSON: usize = 64 * 1024;

impl Containers {
    /// Applies `resources_json` (OCI `linux.resources`) to container `id`'s cgroup.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let init = self.process(id, "")?;
        if init.exit_status().is_some() {
            return Err(ContainerError::Stopped(id.to_owned()));
        }
        let resources = spec::parse_resources(resources_json, MAX_RESOURCES_JSON)?;
        let (path, name) = (spec::cgroups_path(id), id.to_owned());
        tokio::task::spawn_blocking(move || apply(path, name, &resources)).await??;
        slog::debug!(self.log, "container resources updated"; "container" => id);
        Ok(())
    }
}

/// Applies `resources` to the existing cgroup `cgroup_path` (relative to the v2 root).
pub fn apply(
    cgroup_path: PathBuf,
    container_name: String,
    resources: &LinuxResources,
) -> Result<(), ContainerError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| ContainerError::Update(e);
    let config = CgroupConfig {
        cgroup_path,
        systemd_cgroup: false,
        container_name,
    };
    let manager = create_cgroup_manager(config).map_err(|e| failed(e.into()))?;
    manager
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| failed(e.into()))
}
