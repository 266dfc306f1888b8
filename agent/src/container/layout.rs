//! Where the agent keeps container files in the guest.

use std::path::{Path, PathBuf};

use super::spec::CGROUP_PARENT;

/// Guest paths used for containers; tests point them at temporary directories.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<bundles>/<id>/config.json`: the adjusted spec (and exec process files).
    pub bundles: PathBuf,
    /// libcontainer's state root (`with_root_path`).
    pub state_root: PathBuf,
    /// Console sockets on which libcontainer hands over pty masters (short paths: sun_path).
    pub console_dir: PathBuf,
    /// The cgroup v2 mount.
    pub cgroup_root: PathBuf,
    /// Mount point of the pod's shared directory; every container rootfs lies below it.
    pub shared_dir: PathBuf,
}

impl Layout {
    pub fn guest() -> Self {
        Self {
            bundles: PathBuf::from("/run/husk/containers"),
            state_root: PathBuf::from("/run/husk/libcontainer"),
            console_dir: PathBuf::from("/run/husk/tty"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            shared_dir: PathBuf::from(husk_protocol::SHARED_DIR_GUEST),
        }
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    pub fn exec_process_file(&self, id: &str, exec_id: &str) -> PathBuf {
        self.bundle(id).join(format!("exec-{exec_id}.json"))
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(id)
    }

    pub fn cgroup_dir(&self, id: &str) -> PathBuf {
        self.cgroup_root.join(CGROUP_PARENT).join(id)
    }

    /// Creates the directories the agent writes into.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for dir in [&self.bundles, &self.state_root, &self.console_dir] {
            create_private_dir(dir)?;
        }
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_id() {
        let l = Layout::guest();
        assert_eq!(l.bundle("c"), Path::new("/run/husk/containers/c"));
        assert_eq!(
            l.exec_process_file("c", "e"),
            Path::new("/run/husk/containers/c/exec-e.json")
        );
        assert_eq!(l.cgroup_dir("c"), Path::new("/sys/fs/cgroup/husk/c"));
        assert_eq!(l.state_dir("c"), Path::new("/run/husk/libcontainer/c"));
    }

    #[test]
    fn creates_its_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout {
            bundles: tmp.path().join("b"),
            state_root: tmp.path().join("s"),
            console_dir: tmp.path().join("t"),
            ..Layout::guest()
        };
        l.create_dirs().unwrap();
        l.create_dirs().unwrap(); // idempotent
        assert!(l.bundles.is_dir() && l.state_root.is_dir() && l.console_dir.is_dir());
    }
}
