//! Pod network sysctls. A container that shares the VM's network stack (every container of
//! a husk pod does: the VM *is* the pod's network namespace) cannot have libcontainer apply
//! `net.*` sysctls — it refuses them outside a network namespace of the container's own,
//! as runc does on a host. In a pod VM that stack belongs to the pod alone, so the agent
//! applies them itself, before the container starts. (containerd 2.x sets two of them,
//! `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range`, on every pod;
//! kubelet passes a pod's "safe" sysctls the same way.)

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use thiserror::Error;

/// Where sysctls live.
pub const PROC_SYS: &str = "/proc/sys";
/// Prefix of the sysctls that belong to a network namespace.
const NETWORK_PREFIX: &str = "net.";
/// A sysctl value is a short line of text; refuse anything larger.
const MAX_VALUE_LEN: usize = 4096;

#[derive(Debug, Error)]
pub enum SysctlError {
    #[error("sysctl name {0:?} is not a valid name (letters, digits, '_', '-', separated by dots)")]
    BadName(String),
    #[error("sysctl {name} value is {len} bytes; at most {MAX_VALUE_LEN} are allowed")]
    ValueTooLong { name: String, len: usize },
    #[error("setting sysctl {name} = {value:?}: {source}")]
    Write {
        name: String,
        value: String,
        source: std::io::Error,
    },
}

/// Removes the `net.*` sysctls from `spec` and returns them, validated.
pub fn take_network_sysctls(spec: &mut Spec) -> Result<Vec<(String, String)>, SysctlError> {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(Vec::new());
    };
    let Some(mut sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    let mut taken: Vec<(String, String)> = Vec::new();
    sysctls.retain(|name, value| {
        if name.starts_with(NETWORK_PREFIX) {
            taken.push((name.clone(), value.clone()));
            false
        } else {
            true
        }
    });
    linux.set_sysctl(Some(sysctls));
    for (name, value) in &taken {
        path_of(Path::new(PROC_SYS), name)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(SysctlError::ValueTooLong {
                name: name.clone(),
                len: value.len(),
            });
        }
    }
    taken.sort();
    Ok(taken)
}

/// Writes each sysctl under `proc_sys`.
pub fn apply(proc_sys: &Path, sysctls: &[(String, String)]) -> Result<(), SysctlError> {
    for (name, value) in sysctls {
        let path = path_of(proc_sys, name)?;
        std::fs::write(&path, value.as_bytes()).map_err(|source| SysctlError::Write {
            name: name.clone(),
            value: value.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `net.ipv4.ip_forward` → `<proc_sys>/net/ipv4/ip_forward`, refusing anything that could
/// leave the sysctl tree.
fn path_of(proc_sys: &Path, name: &str) -> Result<PathBuf, SysctlError> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if name.len() > 255 || !name.split('.').all(ok_part) {
        return Err(SysctlError::BadName(name.to_string()));
    }
    Ok(name
        .split('.')
        .fold(proc_sys.to_path_buf(), |p, part| p.join(part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sysctls: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"sysctl": sysctls}
        }))
        .unwrap()
    }

    #[test]
    fn takes_only_network_sysctls() {
        let mut s = spec(serde_json::json!({
            "net.ipv4.ping_group_range": "0 2147483647",
            "kernel.shm_rmid_forced": "1",
            "net.ipv4.ip_unprivileged_port_start": "0"
        }));
        let taken = take_network_sysctls(&mut s).unwrap();
        assert_eq!(
            taken,
            [
                (
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "0".to_string()
                ),
                (
                    "net.ipv4.ping_group_range".to_string(),
                    "0 2147483647".to_string()
                ),
            ]
        );
        let left = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1);
        assert!(left.contains_key("kernel.shm_rmid_forced"));
    }

    #[test]
    fn refuses_names_that_escape_the_tree() {
        for bad in ["net..x", "net.ipv4/../../x", "net.", "net.a b"] {
            let mut s = spec(serde_json::json!({ bad: "1" }));
            assert!(
                matches!(take_network_sysctls(&mut s), Err(SysctlError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn applies_under_the_given_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net/ipv4")).unwrap();
        apply(d.path(), &[("net.ipv4.ip_forward".into(), "1".into())]).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        let err = apply(d.path(), &[("net.nope.x".into(), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("net.nope.x"));
    }
}
