//! The pod-level files a Sandbox API pod's containers get, which containerd's pause-container
//! sandboxer would have made: `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` and the
//! pod's shared `/dev/shm`, plus the empty root of the pod's pause container. They live in
//! the pod directory on the host (the shim's own mount namespace) and reach containers as
//! ordinary bind mounts, through the same checks and share as any CRI mount.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use oci_spec::runtime::{Mount, MountBuilder, Spec};
use thiserror::Error;

use super::pod_config::PodFiles;

/// Size of the pod's `/dev/shm`, as containerd gives a pod (64 MiB).
const SHM_TMPFS_OPTIONS: &str = "size=65536k,mode=1777";
/// The pod files' own tmpfs: containers may write `/etc/hosts` and the like (as under
/// runc), but not fill the pod's state directory with it.
const FILES_TMPFS_OPTIONS: &str = "size=1m,nr_inodes=64,mode=0755";
/// Where containerd takes `/etc/resolv.conf` from when the pod has no DNS config.
const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The node's resolv.conf is read up to this size.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

const HOSTNAME: &str = "hostname";
const HOSTS: &str = "hosts";
const RESOLV_CONF: &str = "resolv.conf";
const SHM: &str = "shm";
const PAUSE_ROOT: &str = "pause-root";
/// The pause binary's mount point in the pause container's root.
pub const PAUSE_BINARY: &str = "pause";

#[derive(Debug, Error)]
pub enum PodFilesError {
    #[error("writing the pod file {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting a tmpfs for the pod's files at {path:?}: {errno}")]
    Mount { path: PathBuf, errno: nix::Error },
}

/// Where a pod's files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFileDirs {
    pub files: PathBuf,
    /// The pause container's root: empty but for its mount points.
    pub pause_root: PathBuf,
}

/// Writes `files` into a new directory `dir` and mounts the pod's `/dev/shm` tmpfs there.
pub fn write(dir: &Path, files: &PodFiles) -> Result<PodFileDirs, PodFilesError> {
    let resolv = match &files.resolv_conf {
        Some(text) => text.clone(),
        None => node_resolv_conf(),
    };
    make_dir(dir, 0o755)?;
    mount_tmpfs(dir, "husk-pod-files", FILES_TMPFS_OPTIONS)?;
    write_file(&dir.join(HOSTNAME), &format!("{}\n", files.hostname))?;
    write_file(&dir.join(HOSTS), &files.hosts)?;
    write_file(&dir.join(RESOLV_CONF), &resolv)?;
    let shm = dir.join(SHM);
    make_dir(&shm, 0o1777)?;
    mount_tmpfs(&shm, "shm", SHM_TMPFS_OPTIONS)?;
    let pause_root = dir.join(PAUSE_ROOT);
    make_dir(&pause_root, 0o755)?;
    for d in ["proc", "dev"] {
        make_dir(&pause_root.join(d), 0o755)?;
    }
    write_file(&pause_root.join(PAUSE_BINARY), "")?;
    Ok(PodFileDirs {
        files: dir.to_path_buf(),
        pause_root,
    })
}

fn mount_tmpfs(path: &Path, source: &str, options: &str) -> Result<(), PodFilesError> {
    mount(
        Some(source),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(|errno| PodFilesError::Mount {
        path: path.to_path_buf(),
        errno,
    })
}

/// The node's resolv.conf (containerd copies it for pods without DNS config); empty if it
/// cannot be read.
fn node_resolv_conf() -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(NODE_RESOLV_CONF) {
        let _ = f.take(MAX_RESOLV_CONF).read_to_string(&mut text);
    }
    text
}

fn make_dir(path: &Path, mode: u32) -> Result<(), PodFilesError> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .and_then(|()| {
            // The umask must not take the sticky, world-writable bits of /dev/shm.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        })
        .map_err(|source| PodFilesError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn write_file(path: &Path, text: &str) -> Result<(), PodFilesError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| PodFilesError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Gives a container of the pod the pod's files where its spec has no mount of its own,
/// as containerd's CRI does with a pause container's files. The image's `/dev/shm` tmpfs
/// (containerd's default spec) becomes the pod's shared one.
pub fn add_mounts(spec: &mut Spec, dir: &Path) {
    let readonly_root = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let has = |mounts: &[Mount], dest: &str, bind_only: bool| {
        mounts.iter().any(|m| {
            m.destination() == Path::new(dest) && (!bind_only || m.typ().as_deref() == Some("bind"))
        })
    };
    for (dest, file) in [
        ("/etc/hostname", HOSTNAME),
        ("/etc/hosts", HOSTS),
        ("/etc/resolv.conf", RESOLV_CONF),
    ] {
        if !has(&mounts, dest, false) {
            mounts.push(bind(dest, &dir.join(file), readonly_root, false));
        }
    }
    if !has(&mounts, "/dev/shm", true) {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(bind("/dev/shm", &dir.join(SHM), false, true));
    }
    spec.set_mounts(Some(mounts));
}

fn bind(dest: &str, source: &Path, readonly: bool, shm: bool) -> Mount {
    let mut options = vec![
        "rbind".to_owned(),
        "rprivate".to_owned(),
        if readonly { "ro" } else { "rw" }.to_owned(),
    ];
    if shm {
        options.extend(["nosuid", "nodev", "noexec"].map(str::to_owned));
    }
    let mut m = MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .options(options)
        .build()
        .unwrap_or_default();
    m.set_source(Some(source.to_path_buf()));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn adds_the_pod_files_and_shares_dev_shm() {
        let mut s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=65536k"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/x/etc-hosts", "options": ["rbind"]}
            ]
        }));
        add_mounts(&mut s, Path::new("/run/husk/p/pod-files"));
        let mounts = s.mounts().clone().unwrap();
        let at = |d: &str| -> Vec<&Mount> {
            mounts
                .iter()
                .filter(|m| m.destination() == Path::new(d))
                .collect()
        };
        // kubelet's own /etc/hosts stays.
        assert_eq!(
            at("/etc/hosts")[0].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/pods/x/etc-hosts"))
        );
        assert_eq!(at("/etc/hosts").len(), 1);
        let shm = at("/dev/shm");
        assert_eq!(shm.len(), 1);
        assert_eq!(
            shm[0].source().as_deref(),
            Some(Path::new("/run/husk/p/pod-files/shm"))
        );
        let resolv = at("/etc/resolv.conf")[0];
        assert!(
            resolv
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_owned())
        );
        assert_eq!(at("/etc/hostname").len(), 1);
    }

    #[test]
    fn keeps_a_memory_volume_on_dev_shm() {
        let mut s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/dev/shm", "type": "bind", "source": "/var/lib/kubelet/x", "options": ["rbind"]}]
        }));
        add_mounts(&mut s, Path::new("/p"));
        let mounts = s.mounts().clone().unwrap();
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(
            shm[0].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/x"))
        );
    }
}
