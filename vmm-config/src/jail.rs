//! A jail (set up by `husk-vmm`, see the `husk-vmm` crate's `jail` module): where it is,
//! whose ids it runs as, and what it holds besides its socket directory. Plain data, so the
//! shim can describe a jail for a program husk does not build (QEMU) as well as for its own
//! processes.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An empty host directory: the process mounts its new root on it, in a mount namespace
    /// of its own, so nothing appears on the host.
    pub root: PathBuf,
    /// The host directory holding every socket the process serves or connects to; it is
    /// the jail's `/run`.
    pub sockets: PathBuf,
    /// Unprivileged ids the process switches to (non-zero; unique per pod).
    pub uid: u32,
    pub gid: u32,
}

impl JailConfig {
    /// Ids that are not root, absolute directories.
    pub fn validate(&self) -> Result<(), String> {
        for id in [self.uid, self.gid] {
            if id == 0 || id == u32::MAX {
                return Err(format!("jail uid/gid {id} is root or invalid"));
            }
        }
        for dir in [&self.root, &self.sockets] {
            if !dir.is_absolute() {
                return Err(format!("jail directory {dir:?} is not absolute"));
            }
        }
        Ok(())
    }

    /// `socket` must sit directly in the socket directory, the only one the jail shows.
    pub fn check_socket(&self, socket: &Path) -> Result<(), String> {
        if socket.parent() != Some(self.sockets.as_path()) || socket.file_name().is_none() {
            return Err(format!(
                "socket {socket:?} is not directly in the jail's socket directory {:?}",
                self.sockets
            ));
        }
        Ok(())
    }
}

/// A host path made visible at `inside`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub host: PathBuf,
    pub inside: PathBuf,
}

/// A symbolic link in the jail root (a merged-`/usr` system's `/lib -> usr/lib`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub inside: PathBuf,
    pub target: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// Host character devices, recreated at the same path and usable only by the jail's ids.
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    /// Host files, read-only and not executable.
    #[serde(default)]
    pub files: Vec<Bind>,
    /// Host directories holding a program and its libraries: read-only, executable.
    #[serde(default)]
    pub programs: Vec<Bind>,
    #[serde(default)]
    pub links: Vec<Link>,
    /// `RLIMIT_NPROC`: threads the jail's uid may run.
    pub threads: u64,
    /// Stay in the host's network namespace (a VM's taps live there).
    #[serde(default)]
    pub host_network: bool,
    /// Descriptors the process was handed above stderr (fd 3 onwards) and keeps.
    #[serde(default)]
    pub inherited_fds: u32,
}

/// Where the jail's own parts appear inside it.
pub const SOCKET_DIR: &str = "/run";
/// Where a VM's kernel and initramfs appear inside its jail.
pub const KERNEL_PATH: &str = "/boot/kernel";
pub const INITRD_PATH: &str = "/boot/initrd";

/// `path` as the jailed process sees it: a socket in the jail's socket directory.
pub fn in_socket_dir(path: &Path) -> PathBuf {
    match path.file_name() {
        Some(name) => PathBuf::from(SOCKET_DIR).join(name),
        None => path.to_path_buf(),
    }
}

impl Contents {
    /// Every `inside` path is absolute, plain (no `.`, `..`) and not the root or `/run`;
    /// every host path is absolute.
    pub fn validate(&self) -> Result<(), String> {
        let insides = self
            .devices
            .iter()
            .chain(self.files.iter().chain(&self.programs).map(|b| &b.inside))
            .chain(self.links.iter().map(|l| &l.inside));
        for inside in insides {
            if !is_plain_absolute(inside) || inside == Path::new("/") {
                return Err(format!("jail path {inside:?} is not a plain absolute path"));
            }
            if inside.starts_with(SOCKET_DIR) {
                return Err(format!("jail path {inside:?} is inside {SOCKET_DIR}"));
            }
        }
        for host in self.files.iter().chain(&self.programs).map(|b| &b.host) {
            if !host.is_absolute() {
                return Err(format!("host path {host:?} is not absolute"));
            }
        }
        if self.threads == 0 {
            return Err("a jail needs at least one thread".into());
        }
        Ok(())
    }
}

fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(host: &str, inside: &str) -> Bind {
        Bind {
            host: host.into(),
            inside: inside.into(),
        }
    }

    #[test]
    fn only_plain_absolute_paths_outside_run() {
        let ok = Contents {
            devices: vec!["/dev/kvm".into()],
            files: vec![bind("/usr/share/husk/vmlinux", "/boot/kernel")],
            programs: vec![bind("/usr", "/usr")],
            links: vec![Link {
                inside: "/lib".into(),
                target: "usr/lib".into(),
            }],
            threads: 4,
            ..Default::default()
        };
        ok.validate().unwrap();
        for inside in ["/", "boot/kernel", "/boot/../etc/shadow", "/run/x", "/run"] {
            let mut bad = ok.clone();
            bad.files = vec![bind("/k", inside)];
            assert!(bad.validate().is_err(), "{inside}");
        }
        let mut relative_host = ok.clone();
        relative_host.programs = vec![bind("usr", "/usr")];
        assert!(relative_host.validate().is_err());
        let mut no_threads = ok;
        no_threads.threads = 0;
        assert!(no_threads.validate().is_err());
    }
}
