//! The parent cgroups containerd's namespaces leave behind. `ctr` and CRI give a container
//! the cgroup path `/<namespace>/<id>` by default; the runtime (husk as runc) removes
//! `<id>` and leaves `/<namespace>`, which belongs to whoever owns the namespace. The test
//! run and the demo own theirs, and remove them once nothing runs in them.

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `/<namespace>` in every hierarchy mounted here (cgroup v1: one per controller; v2: the
/// unified one).
fn candidates(root: &Path, namespace: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.join(namespace)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(namespace)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Removes the empty `/<namespace>` cgroups; returns those that could not go (something
/// still runs in them, or a child cgroup is left), with why.
pub fn remove(namespace: &str) -> Vec<(PathBuf, io::Error)> {
    remove_under(Path::new(CGROUP_ROOT), namespace)
}

fn remove_under(root: &Path, namespace: &str) -> Vec<(PathBuf, io::Error)> {
    candidates(root, namespace)
        .into_iter()
        .filter_map(|dir| std::fs::remove_dir(&dir).err().map(|e| (dir, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a plain directory tree (no cgroupfs), an empty namespace directory goes and one
    /// with something in it stays and is reported.
    #[test]
    fn empty_namespace_directories_go_and_busy_ones_are_reported() {
        let root = std::env::temp_dir().join(format!("husk-nscg-{}", std::process::id()));
        for hierarchy in ["cpu", "memory", "pids"] {
            std::fs::create_dir_all(root.join(hierarchy).join("ns")).unwrap();
        }
        std::fs::create_dir_all(root.join("pids/ns/left")).unwrap();
        let stuck = remove_under(&root, "ns");
        let gone = ["cpu", "memory"].map(|h| !root.join(h).join("ns").exists());
        let absent = remove_under(&root, "absent");
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].0, root.join("pids/ns"));
        assert_eq!(gone, [true, true]);
        assert!(absent.is_empty());
    }
}
