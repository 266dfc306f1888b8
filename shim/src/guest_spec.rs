//! Turns a container's OCI spec (host view, from the bundle) into the spec the agent runs in
//! the guest: rootfs and bind-mount sources become paths in the pod's virtio-fs share, host
//! devices, hooks and network namespace paths are dropped (they mean nothing in the VM),
//! and namespace paths that point at the pod's sandbox become the sandbox's guest namespaces.

use std::path::{Path, PathBuf};

use husk_protocol::{ROOTFS_DIR, SHARED_DIR_GUEST};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

/// Where a container's bind-mount sources are placed inside its shared directory.
pub const MOUNTS_DIR: &str = "mounts";
/// Where `rshared` volumes are placed in the share: once per pod (per source and access),
/// so that in the guest every container of the pod binds the same mount and a mount one
/// of them makes below it reaches the others. The leading dot keeps it apart from
/// container directories (ids never start with one).
pub const POD_VOLUMES_DIR: &str = ".pod-volumes";

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("reading {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid OCI runtime spec {path:?}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid OCI runtime spec {path:?}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("bind mount for {destination:?}: source {source_path:?} does not exist on the host")]
    MissingBindSource {
        destination: PathBuf,
        source_path: PathBuf,
    },
    #[error("encoding the guest spec: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A host path that must appear in the shared directory before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub source: PathBuf,
    /// Relative to the share's root: `<container id>/mounts/<n>-<name>`, or
    /// `.pod-volumes/<digest>` for a volume the pod's containers share ([`Self::pod_level`]).
    pub share_path: PathBuf,
    /// Mounted once per pod, for every container that asks for it.
    pub pod_level: bool,
    pub readonly: bool,
    pub recursive: bool,
    /// `rprivate`/`private`: mounts made under the source later stay out of the guest.
    pub private: bool,
    /// A read-only, atomically updated volume (kubelet's `..data` link): the shim watches
    /// it and the guest keeps a copy its inotify watchers see updated.
    pub atomic: bool,
}

/// Reads and validates `<bundle>/config.json`, with an error that says what is wrong where.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_str(&text).map_err(|source| SpecError::Parse {
        path: path.clone(),
        source,
    })?;
    let invalid = |message: &str| SpecError::Invalid {
        path: path.clone(),
        message: message.to_string(),
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("it has no \"process\""))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("\"process.args\" is empty: nothing to run"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(&format!(
            "\"process.cwd\" {:?} must be an absolute path",
            process.cwd()
        )));
    }
    if spec.root().is_none() {
        return Err(invalid("it has no \"root\""));
    }
    Ok(spec)
}

/// The guest path of a container's rootfs.
pub fn guest_rootfs(container_id: &str) -> PathBuf {
    Path::new(SHARED_DIR_GUEST)
        .join(container_id)
        .join(ROOTFS_DIR)
}

/// Rewrites `spec` for the guest. `sandbox_pid` is the guest pid of the pod's sandbox
/// container, whose namespaces CRI asks the other containers to join.
pub fn for_guest(
    mut spec: Spec,
    container_id: &str,
    sandbox_pid: Option<u32>,
) -> Result<(Vec<u8>, Vec<HostBind>), SpecError> {
    if let Some(root) = spec.root_mut() {
        root.set_path(guest_rootfs(container_id));
    }
    spec.set_hooks(None);
    let binds = share_bind_mounts(&mut spec, container_id)?;
    if let Some(linux) = spec.linux_mut() {
        // Host device nodes do not exist in the guest.
        linux.set_devices(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces
                .retain(|ns| !(ns.typ() == LinuxNamespaceType::Network && ns.path().is_some()));
            for ns in namespaces.iter_mut() {
                if ns.path().is_none() {
                    continue;
                }
                let guest = sandbox_pid.and_then(|pid| guest_ns_path(pid, ns.typ()));
                ns.set_path(guest);
            }
        }
    }
    Ok((serde_json::to_vec(&spec)?, binds))
}

fn guest_ns_path(pid: u32, typ: LinuxNamespaceType) -> Option<PathBuf> {
    let name = match typ {
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        // A host user or time namespace cannot be joined inside the VM: make a new one.
        _ => return None,
    };
    Some(PathBuf::from(format!("/proc/{pid}/ns/{name}")))
}

fn share_bind_mounts(spec: &mut Spec, container_id: &str) -> Result<Vec<HostBind>, SpecError> {
    let mut binds = Vec::new();
    let Some(mounts) = spec.mounts_mut() else {
        return Ok(binds);
    };
    for (index, m) in mounts.iter_mut().enumerate() {
        let options = m.options().clone().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source().clone().filter(|s| is_bind && s.is_absolute()) else {
            continue;
        };
        if !source.exists() {
            return Err(SpecError::MissingBindSource {
                destination: m.destination().clone(),
                source_path: source,
            });
        }
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let readonly = options.iter().any(|o| o == "ro");
        let pod_level = options.iter().any(|o| o == "rshared" || o == "shared");
        let share_path = if pod_level {
            Path::new(POD_VOLUMES_DIR).join(pod_volume_name(&source, readonly))
        } else {
            Path::new(container_id)
                .join(MOUNTS_DIR)
                .join(format!("{index}-{}", sanitize(&name)))
        };
        m.set_source(Some(Path::new(SHARED_DIR_GUEST).join(&share_path)));
        let atomic = readonly && !pod_level && crate::volume_watch::is_atomic_volume(&source);
        binds.push(HostBind {
            source,
            share_path,
            pod_level,
            readonly,
            recursive: options.iter().any(|o| o == "rbind"),
            private: options.iter().any(|o| o == "rprivate" || o == "private"),
            atomic,
        });
    }
    Ok(binds)
}

/// The pod-level name of volume `source` mounted `readonly` or not: a digest, so the name
/// says nothing about the host path and has a fixed length.
fn pod_volume_name(source: &Path, readonly: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_os_str().as_encoded_bytes());
    h.update(if readonly { b"\0ro" } else { b"\0rw" });
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        "root".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn spec_json(extra: Value) -> Value {
        let mut v = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"},
                               {"type": "ipc", "path": "/proc/4242/ns/ipc"}, {"type": "mount"}],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
            },
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]}
        });
        if let (Some(base), Value::Object(extra)) = (v.as_object_mut(), extra) {
            base.extend(extra);
        }
        v
    }

    fn write_bundle(v: &Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
        d
    }

    #[test]
    fn rewrites_root_namespaces_devices_and_hooks() {
        let d = write_bundle(&spec_json(json!({})));
        let spec = load(d.path()).unwrap();
        let (bytes, binds) = for_guest(spec, "c1", Some(7)).unwrap();
        assert!(binds.is_empty());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert!(v.get("hooks").is_none());
        assert!(v["linux"].get("devices").is_none());
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        assert!(
            ns.iter()
                .any(|n| n["type"] == "ipc" && n["path"] == "/proc/7/ns/ipc")
        );
    }

    #[test]
    fn namespace_paths_without_a_sandbox_become_new_namespaces() {
        let d = write_bundle(&spec_json(json!({})));
        let (bytes, _) = for_guest(load(d.path()).unwrap(), "c1", None).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let ipc = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "ipc")
            .cloned()
            .unwrap();
        assert!(ipc.get("path").is_none());
    }

    #[test]
    fn bind_mounts_move_into_the_share() {
        let src = tempfile::tempdir().unwrap();
        let d = write_bundle(&spec_json(json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ]})));
        let (bytes, binds) = for_guest(load(d.path()).unwrap(), "c1", None).unwrap();
        assert_eq!(binds.len(), 1);
        assert!(binds[0].readonly && binds[0].recursive);
        assert_eq!(binds[0].source, src.path());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let guest_src = v["mounts"][0]["source"].as_str().unwrap();
        assert!(
            guest_src.starts_with("/run/husk/shared/c1/mounts/0-"),
            "{guest_src}"
        );
        assert_eq!(v["mounts"][1]["source"], "tmpfs");
    }

    #[test]
    fn propagation_and_atomic_volumes_are_recognised() {
        let (plain, config) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::symlink("..gen", config.path().join("..data")).unwrap();
        let bind = |src: &Path, opts: Value| json!({"destination": "/v", "type": "bind", "source": src, "options": opts});
        let d = write_bundle(&spec_json(json!({"mounts": [
            bind(plain.path(), json!(["rbind", "rprivate"])),
            bind(plain.path(), json!(["rbind", "rshared"])),
            bind(config.path(), json!(["rbind", "ro", "rprivate"])),
            bind(config.path(), json!(["rbind", "rprivate"])),
        ]})));
        let (bytes, binds) = for_guest(load(d.path()).unwrap(), "c1", None).unwrap();
        assert!(binds[0].private && !binds[0].pod_level && !binds[0].atomic);
        assert!(!binds[1].private && binds[1].pod_level);
        assert!(binds[1].share_path.starts_with(POD_VOLUMES_DIR));
        assert!(binds[2].atomic, "a read-only volume with ..data");
        assert!(!binds[3].atomic, "a writable one is shared as it is");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let shared = v["mounts"][1]["source"].as_str().unwrap();
        assert_eq!(
            Path::new(shared),
            Path::new(SHARED_DIR_GUEST).join(&binds[1].share_path)
        );
        // The same volume in another container lands on the same pod-level path.
        let (_, again) = for_guest(load(d.path()).unwrap(), "c2", None).unwrap();
        assert_eq!(again[1].share_path, binds[1].share_path);
        assert_ne!(again[0].share_path, binds[0].share_path);
    }

    #[test]
    fn missing_bind_source_is_named() {
        let d = write_bundle(&spec_json(json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "/nonexistent/x", "options": ["rbind"]}
        ]})));
        let err = for_guest(load(d.path()).unwrap(), "c1", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/x") && err.contains("/data"),
            "{err}"
        );
    }

    #[test]
    fn invalid_specs_are_explained() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), "{\"process\": 5}").unwrap();
        let err = load(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("invalid"),
            "{err}"
        );
        let d = write_bundle(
            &json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"cwd": "/", "args": [], "user": {"uid": 0, "gid": 0}}}),
        );
        let err = load(d.path()).unwrap_err().to_string();
        assert!(err.contains("process.args"), "{err}");
        let d = write_bundle(&json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"cwd": "rel", "args": ["sh"], "user": {"uid": 0, "gid": 0}}}));
        let err = load(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("process.cwd") && err.contains("absolute"),
            "{err}"
        );
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap_err().to_string().contains("reading"));
    }
}
