//! The pod's host cgroup. Every host process of a pod lives in it: the shim joins it before
//! it starts anything for the pod, so the VMM, virtiofsd and the in-shim vsock backend
//! inherit it at fork (no window in which a child runs elsewhere, and a helper's own
//! children follow too). CPU and memory of the VM are then charged to the pod, as Kata does
//! with `sandbox_cgroup_only`.
//!
//! Which cgroup: the sandbox's OCI `linux.cgroupsPath` when containerd gives one (with CRI
//! that is kubelet's pod cgroup plus the sandbox id, cgroupfs `/kubepods/…/<id>` or systemd
//! `slice:prefix:name` form), else `<runtime.cgroup_parent>/<sandbox id>`. On teardown the
//! shim moves itself to the parent, kills whatever is left inside, and removes the cgroup.

use std::time::{Duration, Instant};

use cgroups_rs::{Cgroup, CgroupPid, hierarchies};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thiserror::Error;

/// How long processes killed at teardown get to leave the cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum PodCgroupError {
    #[error(
        "the sandbox's cgroup path {0:?} is not usable: it must be absolute, or slice:prefix:name, without `..`"
    )]
    BadPath(String),
    #[error("creating the pod cgroup {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: cgroups_rs::error::Error,
    },
    #[error(
        "the pod cgroup {path} already holds processes {pids:?} of something else; give each sandbox its own linux.cgroupsPath"
    )]
    InUse { path: String, pids: Vec<u64> },
    #[error("moving the shim into the pod cgroup {path}: {source}")]
    Join {
        path: String,
        #[source]
        source: cgroups_rs::error::Error,
    },
    #[error("moving the shim out of the pod cgroup {path}: {source}")]
    Leave {
        path: String,
        #[source]
        source: cgroups_rs::error::Error,
    },
    #[error("processes {pids:?} are still in the pod cgroup {path} after SIGKILL")]
    NotEmpty { path: String, pids: Vec<u64> },
    #[error("removing the pod cgroup {path}: {source}")]
    Remove {
        path: String,
        #[source]
        source: cgroups_rs::error::Error,
    },
}

/// The cgroup path (from each hierarchy's root) of pod `sandbox_id`.
pub fn path_for(
    cgroups_path: Option<&str>,
    parent: &str,
    sandbox_id: &str,
) -> Result<String, PodCgroupError> {
    let path = match cgroups_path.filter(|p| !p.is_empty()) {
        None => format!("{}/{sandbox_id}", parent.trim_end_matches('/')),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => systemd_path(p).ok_or_else(|| PodCgroupError::BadPath(p.to_string()))?,
    };
    if path.split('/').any(|c| c == ".." || c == ".") || path == "/" {
        return Err(PodCgroupError::BadPath(path));
    }
    Ok(path)
}

/// `kubepods-besteffort-pod1.slice:cri-containerd:<id>` → the cgroupfs path systemd uses:
/// `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-<id>.scope`.
fn systemd_path(spec: &str) -> Option<String> {
    let mut parts = spec.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || name.contains('/') || prefix.contains('/') {
        return None;
    }
    let mut path = String::new();
    let stem = slice.strip_suffix(".slice")?;
    if stem != "-" {
        if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
            return None;
        }
        let mut prefix_so_far = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return None;
            }
            if !prefix_so_far.is_empty() {
                prefix_so_far.push('-');
            }
            prefix_so_far.push_str(part);
            path.push_str(&format!("/{prefix_so_far}.slice"));
        }
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Some(format!("{path}/{unit}"))
}

/// A pod cgroup the shim is in.
#[derive(Debug, Clone)]
pub struct PodCgroup {
    path: String,
}

impl PodCgroup {
    /// Creates the cgroup (in every mounted hierarchy, v1 or v2) and moves this process
    /// into it.
    pub fn create_and_join(path: &str) -> Result<Self, PodCgroupError> {
        let cgroup = Cgroup::new(hierarchies::auto(), relative(path)).map_err(|source| {
            PodCgroupError::Create {
                path: path.to_string(),
                source,
            }
        })?;
        // Teardown kills whatever is left in the cgroup: it must be this pod's alone.
        let others: Vec<u64> = cgroup.procs().into_iter().map(|p| p.pid).collect();
        if !others.is_empty() {
            return Err(PodCgroupError::InUse {
                path: path.to_string(),
                pids: others,
            });
        }
        if let Err(source) = cgroup.add_task_by_tgid(own_pid()) {
            let _ = cgroup.delete();
            return Err(PodCgroupError::Join {
                path: path.to_string(),
                source,
            });
        }
        Ok(Self {
            path: path.to_string(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Moves the shim to the parent cgroup, kills anything left inside (a helper that
    /// outlived the VM), waits for it to leave, and removes the cgroup. Blocks for at most
    /// [`DRAIN_TIMEOUT`].
    pub fn remove(&self) -> Result<(), PodCgroupError> {
        let cgroup = Cgroup::load(hierarchies::auto(), relative(&self.path));
        cgroup
            .move_task_to_parent_by_tgid(own_pid())
            .map_err(|source| PodCgroupError::Leave {
                path: self.path.clone(),
                source,
            })?;
        remove_cgroup(&cgroup, &self.path)
    }
}

/// Removes the cgroup at `path` if it exists, killing what is left in it: for `delete`,
/// after a shim died without tearing its pod down.
pub fn remove_leftover(path: &str) -> Result<bool, PodCgroupError> {
    let cgroup = Cgroup::load(hierarchies::auto(), relative(path));
    if !cgroup.exists() {
        return Ok(false);
    }
    remove_cgroup(&cgroup, path).map(|()| true)
}

fn remove_cgroup(cgroup: &Cgroup, path: &str) -> Result<(), PodCgroupError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left: Vec<u64> = cgroup.procs().into_iter().map(|p| p.pid).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(PodCgroupError::NotEmpty {
                path: path.to_string(),
                pids: left,
            });
        }
        for pid in &left {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cgroup.delete().map_err(|source| PodCgroupError::Remove {
        path: path.to_string(),
        source,
    })
}

/// cgroups-rs joins paths onto each hierarchy's mount point: an absolute path would replace
/// it (and the crate panics on a path outside the mount).
fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn own_pid() -> CgroupPid {
    CgroupPid::from(u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_path_wins_over_the_parent() {
        assert_eq!(path_for(None, "/husk", "s1").unwrap(), "/husk/s1");
        assert_eq!(path_for(Some(""), "/husk/", "s1").unwrap(), "/husk/s1");
        assert_eq!(
            path_for(Some("/kubepods/besteffort/pod1/s1"), "/husk", "s1").unwrap(),
            "/kubepods/besteffort/pod1/s1"
        );
        assert_eq!(
            path_for(
                Some("kubepods-besteffort-pod1.slice:cri-containerd:s1"),
                "/husk",
                "s1"
            )
            .unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-s1.scope"
        );
        assert_eq!(
            path_for(Some("-.slice::s1"), "/husk", "s1").unwrap(),
            "/s1.scope"
        );
    }

    #[test]
    fn unusable_paths_are_refused() {
        for bad in [
            "/kubepods/../etc",
            "relative/path",
            "a.slice:b",
            "a--b.slice:p:n",
            "a.slice:p:n/x",
            "/",
        ] {
            assert!(
                matches!(
                    path_for(Some(bad), "/husk", "s1"),
                    Err(PodCgroupError::BadPath(_))
                ),
                "{bad}"
            );
        }
    }
}
