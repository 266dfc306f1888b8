//! Validates an OCI spec from the shim and adjusts it for the guest.
//!
//! The shim already rewrote paths to guest paths; here the agent makes sure the container is
//! isolated the way a pod VM needs, and removes what the guest cannot provide:
//! - `root.path` must lie under the shared directory (the only place rootfs come from);
//! - mount, pid, ipc and uts namespaces are always new (or joined, when a path is given);
//! - the network namespace is dropped unless it names one to join: containers share the
//!   VM's network, which *is* the pod's network namespace (so the agent applies the pod's
//!   `net.*` sysctls itself, see `sysctl`);
//! - cgroups go to `/husk/<id>` on cgroup v2;
//! - a privileged container (one allowed every device) gets the guest's devices;
//! - hooks (host binaries) and AppArmor/SELinux labels (absent in the guest) are removed.
//!
//! Seccomp, capabilities, no_new_privileges, rlimits, user, env, cwd and args are kept as given.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Process, Spec};
use thiserror::Error;

use super::guest_devices;

/// Parent cgroup of every container, relative to the cgroup v2 root.
pub const CGROUP_PARENT: &str = "husk";

/// Namespaces every container gets, whatever the spec says.
const REQUIRED_NAMESPACES: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
];

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("the OCI spec is not valid runtime-spec JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the exec process is not a valid runtime-spec process object: {0}")]
    ProcessJson(#[source] serde_json::Error),
    #[error("the resources are not a valid runtime-spec linux.resources object: {0}")]
    ResourcesJson(#[source] serde_json::Error),
    #[error("the resources object is {len} bytes; at most {max} are accepted")]
    ResourcesTooLarge { len: usize, max: usize },
    #[error("ociVersion {0:?} is not supported (expected 1.x)")]
    Version(String),
    #[error("root is missing")]
    MissingRoot,
    #[error("root.path {path:?} must be an absolute path under {shared:?} without '.' or '..'")]
    RootOutsideShared { path: PathBuf, shared: PathBuf },
    #[error("process is missing")]
    MissingProcess,
    #[error("process.args is empty")]
    EmptyArgs,
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(PathBuf),
    #[error("the linux section is missing")]
    MissingLinux,
    #[error("building a namespace entry: {0}")]
    Namespace(#[source] oci_spec::OciSpecError),
}

/// Parses the spec JSON of CreateContainer.
pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(json).map_err(SpecError::Json)
}

/// Parses and checks the process JSON of ExecProcess.
pub fn parse_exec_process(json: &[u8], terminal: bool) -> Result<Process, SpecError> {
    let mut process: Process = serde_json::from_slice(json).map_err(SpecError::ProcessJson)?;
    check_process(&mut process, terminal)?;
    Ok(process)
}

/// Parses an OCI `linux.resources` object of at most `max` bytes.
pub fn parse_resources(json: &[u8], max: usize) -> Result<LinuxResources, SpecError> {
    if json.len() > max {
        return Err(SpecError::ResourcesTooLarge {
            len: json.len(),
            max,
        });
    }
    serde_json::from_slice(json).map_err(SpecError::ResourcesJson)
}

/// The cgroup (relative to the v2 root) of container `id`.
pub fn cgroups_path(id: &str) -> PathBuf {
    Path::new("/").join(CGROUP_PARENT).join(id)
}

/// Validates `spec` and rewrites it for the guest; see the module docs.
pub fn adjust_for_guest(
    spec: &mut Spec,
    id: &str,
    shared_dir: &Path,
    terminal: bool,
) -> Result<(), SpecError> {
    if !spec.version().starts_with("1.") {
        return Err(SpecError::Version(spec.version().clone()));
    }
    let root = spec.root().as_ref().ok_or(SpecError::MissingRoot)?;
    if !is_strictly_under(root.path(), shared_dir) {
        return Err(SpecError::RootOutsideShared {
            path: root.path().clone(),
            shared: shared_dir.to_path_buf(),
        });
    }

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or(SpecError::MissingProcess)?;
    check_process(process, terminal)?;
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    spec.set_hooks(None);

    let privileged = guest_devices::is_privileged(spec);
    let linux = spec.linux_mut().as_mut().ok_or(SpecError::MissingLinux)?;
    linux.set_mount_label(None);
    linux.set_cgroups_path(Some(cgroups_path(id)));

    // containerd asks for "rslave"/"rshared" (runc's names); libcontainer knows only the
    // plain names and always applies them recursively.
    if let Some(p) = linux.rootfs_propagation().as_deref() {
        let plain = p
            .strip_prefix('r')
            .filter(|rest| matches!(*rest, "shared" | "slave" | "private" | "unbindable"));
        if let Some(plain) = plain {
            linux.set_rootfs_propagation(Some(plain.to_owned()));
        }
    }
    if privileged {
        linux.set_devices(Some(guest_devices::list(Path::new("/dev"))));
    }
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network || ns.path().is_some());
    for typ in REQUIRED_NAMESPACES {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            let ns = LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(SpecError::Namespace)?;
            namespaces.push(ns);
        }
    }
    linux.set_namespaces(Some(namespaces));
    Ok(())
}

/// Checks what libcontainer would reject late or obscurely, and makes `terminal` agree with
/// the requested stdio (the request's `Stdio.terminal` or the spec's own flag turn it on).
fn check_process(process: &mut Process, terminal: bool) -> Result<(), SpecError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::EmptyArgs);
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd(process.cwd().clone()));
    }
    let terminal = terminal || process.terminal().unwrap_or(false);
    process.set_terminal(Some(terminal));
    Ok(())
}

/// True if `path` is absolute, free of `.`/`..`, and strictly below `dir`.
fn is_strictly_under(path: &Path, dir: &Path) -> bool {
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    clean && path != dir && path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxNamespace, ProcessBuilder, RootBuilder, SpecBuilder};

    use super::*;

    const SHARED: &str = "/run/husk/shared";

    fn spec_with_root(root: &str) -> Spec {
        let mut spec = Spec::default();
        spec.set_root(Some(RootBuilder::default().path(root).build().unwrap()));
        spec
    }

    fn ns_types(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let linux = spec.linux().as_ref().unwrap();
        let nss: &Vec<LinuxNamespace> = linux.namespaces().as_ref().unwrap();
        nss.iter().map(|n| (n.typ(), n.path().clone())).collect()
    }

    #[test]
    fn adjusts_a_default_spec() {
        let mut spec = spec_with_root("/run/husk/shared/c1/rootfs");
        adjust_for_guest(&mut spec, "c1", Path::new(SHARED), false).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/husk/c1")));
        let types: Vec<_> = ns_types(&spec).into_iter().map(|(t, _)| t).collect();
        assert!(!types.contains(&LinuxNamespaceType::Network));
        for required in REQUIRED_NAMESPACES {
            assert_eq!(
                types.iter().filter(|t| **t == required).count(),
                1,
                "{required:?}"
            );
        }
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(false));
    }

    #[test]
    fn keeps_joinable_namespaces_and_adds_missing_ones() {
        let mut spec = spec_with_root("/run/husk/shared/c2/rootfs");
        let join = |typ, path: &str| {
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .path(path)
                .build()
                .unwrap()
        };
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_namespaces(Some(vec![
            join(LinuxNamespaceType::Network, "/proc/7/ns/net"),
            join(LinuxNamespaceType::Ipc, "/proc/7/ns/ipc"),
        ]));
        adjust_for_guest(&mut spec, "c2", Path::new(SHARED), true).unwrap();
        let nss = ns_types(&spec);
        assert!(nss.contains(&(LinuxNamespaceType::Network, Some("/proc/7/ns/net".into()))));
        assert!(nss.contains(&(LinuxNamespaceType::Ipc, Some("/proc/7/ns/ipc".into()))));
        assert!(nss.contains(&(LinuxNamespaceType::Pid, None)));
        assert_eq!(nss.len(), 5);
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
    }

    #[test]
    fn strips_hooks_and_labels_but_keeps_security_settings() {
        let json = r#"{
            "ociVersion": "1.0.2",
            "root": {"path": "/run/husk/shared/c/rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 1000, "gid": 1000},
                        "noNewPrivileges": true, "apparmorProfile": "docker-default",
                        "selinuxLabel": "system_u:system_r:container_t:s0",
                        "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
            "linux": {"mountLabel": "x", "namespaces": [{"type": "network"}],
                      "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}
        }"#;
        let mut spec = parse_spec(json.as_bytes()).unwrap();
        adjust_for_guest(&mut spec, "c", Path::new(SHARED), false).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert!(spec.hooks().is_none());
        assert!(process.apparmor_profile().is_none() && process.selinux_label().is_none());
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.user().uid(), 1000);
        assert!(process.capabilities().is_some());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.mount_label().is_none());
        assert!(linux.seccomp().is_some());
    }

    #[test]
    fn a_container_allowed_every_device_gets_the_guests() {
        let mut spec = spec_with_root("/run/husk/shared/c1/rootfs");
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "access": "rwm"}]
        }))
        .unwrap();
        if let Some(l) = spec.linux_mut() {
            l.set_resources(Some(resources));
        }
        adjust_for_guest(&mut spec, "c1", Path::new("/run/husk/shared"), false).unwrap();
        let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));

        let mut plain = spec_with_root("/run/husk/shared/c1/rootfs");
        adjust_for_guest(&mut plain, "c1", Path::new("/run/husk/shared"), false).unwrap();
        assert!(plain.linux().as_ref().unwrap().devices().is_none());

        // containerd's privileged signature without the device rule: nothing masked, and
        // CAP_SYS_ADMIN.
        let mut unmasked: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/run/husk/shared/c1/rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "capabilities": {"bounding": ["CAP_SYS_ADMIN"]}},
            "linux": {}
        }))
        .unwrap();
        adjust_for_guest(&mut unmasked, "c1", Path::new("/run/husk/shared"), false).unwrap();
        assert!(unmasked.linux().as_ref().unwrap().devices().is_some());
    }

    #[test]
    fn rootfs_propagation_takes_libcontainers_names() {
        for (given, wanted) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("slave", "slave"),
            ("rbogus", "rbogus"),
        ] {
            let mut spec = spec_with_root("/run/husk/shared/c1/rootfs");
            if let Some(l) = spec.linux_mut() {
                l.set_rootfs_propagation(Some(given.into()));
            }
            adjust_for_guest(&mut spec, "c1", Path::new("/run/husk/shared"), false).unwrap();
            let got = spec.linux().as_ref().unwrap().rootfs_propagation().clone();
            assert_eq!(got.as_deref(), Some(wanted), "{given}");
        }
    }

    #[test]
    fn rejects_roots_outside_the_shared_dir() {
        for root in [
            "/rootfs",
            "/run/husk/shared",
            "/run/husk/shared/../../../etc",
            "run/husk/shared/c/rootfs",
            "/run/husk/sharedx/c/rootfs",
        ] {
            let mut spec = spec_with_root(root);
            let err = adjust_for_guest(&mut spec, "c", Path::new(SHARED), false).unwrap_err();
            assert!(
                matches!(err, SpecError::RootOutsideShared { .. }),
                "{root}: {err}"
            );
        }
        let mut spec = Spec::default();
        spec.set_root(None);
        assert!(matches!(
            adjust_for_guest(&mut spec, "c", Path::new(SHARED), false),
            Err(SpecError::MissingRoot)
        ));
    }

    #[test]
    fn rejects_bad_processes_and_versions() {
        let mut spec = spec_with_root("/run/husk/shared/c/rootfs");
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(Vec::<String>::new())
                .build()
                .unwrap(),
        ));
        assert!(matches!(
            adjust_for_guest(&mut spec, "c", Path::new(SHARED), false),
            Err(SpecError::EmptyArgs)
        ));
        let mut spec = spec_with_root("/run/husk/shared/c/rootfs");
        spec.set_linux(None);
        assert!(matches!(
            adjust_for_guest(&mut spec, "c", Path::new(SHARED), false),
            Err(SpecError::MissingLinux)
        ));
        let mut spec = SpecBuilder::default().version("0.9").build().unwrap();
        spec.set_root(Some(
            RootBuilder::default()
                .path("/run/husk/shared/c/r")
                .build()
                .unwrap(),
        ));
        assert!(matches!(
            adjust_for_guest(&mut spec, "c", Path::new(SHARED), false),
            Err(SpecError::Version(_))
        ));
        assert!(matches!(parse_spec(b"{not json"), Err(SpecError::Json(_))));
    }

    #[test]
    fn parses_exec_processes() {
        let p = parse_exec_process(
            br#"{"args":["ls"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
            true,
        )
        .unwrap();
        assert_eq!(p.terminal(), Some(true));
        let relative = br#"{"args":["ls"],"cwd":"tmp","user":{"uid":0,"gid":0}}"#;
        assert!(matches!(
            parse_exec_process(relative, false),
            Err(SpecError::RelativeCwd(_))
        ));
        assert!(matches!(
            parse_exec_process(br#"{"cwd":"/","user":{"uid":0,"gid":0}}"#, false),
            Err(SpecError::EmptyArgs)
        ));
        assert!(matches!(
            parse_exec_process(b"[]", false),
            Err(SpecError::ProcessJson(_))
        ));
    }
}
