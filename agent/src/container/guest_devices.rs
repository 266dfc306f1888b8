//! A privileged container's devices: the guest's own.
//!
//! containerd marks a privileged container by clearing its masked and read-only paths and
//! granting every capability, and (unless `privileged_without_host_devices`, which husk's
//! runtime entry sets) lists the host's device nodes with a rule allowing every device;
//! the shim drops any host device anyway.
//! runc on a host would give such a container every host device; in the pod VM the
//! counterpart is every device of the guest, listed here from the guest's `/dev`. The guest
//! is inside the isolation boundary: nothing here reaches the host.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Spec};

/// `/dev` entries that are not the guest's hardware: per-container mounts and links that
/// libcontainer makes itself.
const SKIPPED: [&str; 5] = ["pts", "shm", "mqueue", "console", "ptmx"];
/// Bound on what is listed (the guest has a few dozen devices).
const MAX_DEVICES: usize = 512;
/// How deep below `/dev` devices are looked for (`/dev/net/tun`, `/dev/vfio/…`).
const MAX_DEPTH: usize = 3;

/// True if `spec` is a privileged container's: every device allowed, or containerd's
/// privileged signature (no masked or read-only paths, and `CAP_SYS_ADMIN` in its bounding
/// set; kubelet always sends masked paths otherwise).
pub fn is_privileged(spec: &Spec) -> bool {
    let Some(linux) = spec.linux().as_ref() else {
        return false;
    };
    let all_devices = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().as_ref())
        .is_some_and(|rules| allows_all(rules));
    let unmasked = linux.masked_paths().as_ref().is_none_or(Vec::is_empty)
        && linux.readonly_paths().as_ref().is_none_or(Vec::is_empty);
    let sys_admin = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin));
    all_devices || (unmasked && sys_admin)
}

/// True if the rules allow every device.
fn allows_all(rules: &[LinuxDeviceCgroup]) -> bool {
    rules.iter().any(|r| {
        r.allow()
            && matches!(r.typ(), None | Some(LinuxDeviceType::A))
            && r.major().is_none()
            && r.minor().is_none()
            && r.access().as_deref().is_none_or(|a| a.contains("rwm"))
    })
}

/// The device nodes below `dev`, as OCI devices at the same paths.
pub fn list(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(dev, Path::new("/dev"), 0, &mut out);
    out
}

fn walk(dir: &Path, guest: &Path, depth: usize, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= MAX_DEVICES {
            return;
        }
        let name = entry.file_name();
        if depth == 0 && SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let (path, at) = (entry.path(), guest.join(&name));
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let t = meta.file_type();
        if t.is_dir() && depth < MAX_DEPTH {
            walk(&path, &at, depth + 1, out);
            continue;
        }
        let typ = if t.is_char_device() {
            LinuxDeviceType::C
        } else if t.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if let Some(d) = device(at, typ, &meta) {
            out.push(d);
        }
    }
}

fn device(path: PathBuf, typ: LinuxDeviceType, meta: &fs::Metadata) -> Option<LinuxDevice> {
    let rdev = meta.rdev();
    let major = i64::try_from(nix::sys::stat::major(rdev)).ok()?;
    let minor = i64::try_from(nix::sys::stat::minor(rdev)).ok()?;
    let mut d = LinuxDevice::default();
    d.set_path(path);
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_file_mode(Some(meta.mode() & 0o7777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, typ: Option<LinuxDeviceType>, major: Option<i64>) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(typ);
        r.set_major(major);
        r.set_access(Some("rwm".into()));
        r
    }

    #[test]
    fn only_an_allow_all_rule_is_privileged() {
        assert!(allows_all(&[
            rule(false, None, None),
            rule(true, Some(LinuxDeviceType::A), None)
        ]));
        assert!(allows_all(&[rule(true, None, None)]));
        assert!(!allows_all(&[rule(false, None, None)]));
        assert!(!allows_all(&[rule(true, Some(LinuxDeviceType::C), None)]));
        assert!(!allows_all(&[rule(true, None, Some(1))]));
        assert!(!allows_all(&[]));
    }

    #[test]
    fn lists_device_nodes_with_their_numbers() {
        let devices = list(Path::new("/dev"));
        let null = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null is listed");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(
            devices
                .iter()
                .all(|d| !d.path().starts_with("/dev/pts") && d.path() != Path::new("/dev/console"))
        );
    }
}
