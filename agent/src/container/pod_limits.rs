//! The pod's own limits on the cgroup above every container (`/husk`), as kubelet's pod
//! cgroup holds them on a host: the containers together cannot use more than the pod may,
//! whatever the VM's size (which adds room for the guest kernel and agent).

use std::path::Path;

use super::spec::{self, CGROUP_PARENT};
use super::update::{self, MAX_RESOURCES_JSON};
use super::{ContainerError, Containers};

const CONTROLLERS_FILE: &str = "cgroup.controllers";
const SUBTREE_CONTROL_FILE: &str = "cgroup.subtree_control";

impl Containers {
    /// Creates the pod cgroup (its OOM events are watched from the start) and applies the
    /// pod limits `resources_json` (OCI `linux.resources`); empty: none.
    pub async fn limit_pod(&self, resources_json: &[u8]) -> Result<(), ContainerError> {
        let root = self.layout().cgroup_root.clone();
        if resources_json.is_empty() {
            return tokio::task::spawn_blocking(move || create_pod_cgroup(&root)).await?;
        }
        let resources = spec::parse_resources(resources_json, MAX_RESOURCES_JSON)?;
        let applied = tokio::task::spawn_blocking(move || {
            create_pod_cgroup(&root)?;
            update::apply(
                Path::new("/").join(CGROUP_PARENT),
                CGROUP_PARENT.to_owned(),
                &resources,
            )
        });
        applied.await??;
        slog::info!(self.log, "pod limits applied"; "limits" => String::from_utf8_lossy(resources_json).into_owned());
        Ok(())
    }
}

/// `/husk` with every controller the guest kernel has enabled for it.
fn create_pod_cgroup(root: &Path) -> Result<(), ContainerError> {
    let io = |what: String| move |source| ContainerError::Io { what, source };
    let controllers = std::fs::read_to_string(root.join(CONTROLLERS_FILE)).map_err(io(format!(
        "reading {}",
        root.join(CONTROLLERS_FILE).display()
    )))?;
    let subtree = root.join(SUBTREE_CONTROL_FILE);
    for controller in controllers.split_whitespace() {
        std::fs::write(&subtree, format!("+{controller}")).map_err(io(format!(
            "enabling {controller} in {}",
            subtree.display()
        )))?;
    }
    let dir = root.join(CGROUP_PARENT);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(io(format!("creating {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}
