//! virtiofsd: the vhost-user-fs backend that serves a pod's shared directory to its VM.
//!
//! husk binds the listening socket itself and hands it over as fd 3 (`--fd=3`): the socket
//! exists before the VMM starts, so there is no startup race to poll for. virtiofsd runs its
//! own namespace sandbox and exits when the VM disconnects.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use slog::Logger;
use tokio::process::Command;

use crate::child::{Stdout, Supervised};
use crate::spec::SharedFsSpec;
use crate::vmm::VmmError;

/// The guest's extended attributes live on the host only under `user.virtiofs.`: a guest
/// that sets `security.capability` (a file capability a host user could execute) or
/// `trusted.overlay.*` (the host overlayfs's own metadata) on a host file sets
/// `user.virtiofs.security.capability` instead, which means nothing to the host. Host
/// xattrs outside the prefix are hidden from the guest (`bad`), so image files' own
/// `security.capability` does not apply in the guest: grant capabilities in the spec.
pub const GUEST_XATTR_MAP: &str = ":prefix:all::user.virtiofs.::bad:all:::";

pub(crate) fn spawn(
    spec: &SharedFsSpec,
    socket: &Path,
    log: &Logger,
) -> Result<Supervised, VmmError> {
    let listener = UnixListener::bind(socket).map_err(|source| VmmError::Socket {
        path: socket.to_path_buf(),
        source,
    })?;
    let mut cmd = Command::new(&spec.virtiofsd);
    cmd.args(args(spec));
    Supervised::spawn(
        "virtiofsd",
        cmd,
        Stdout::Null,
        vec![OwnedFd::from(listener)],
        log,
    )
}

fn args(spec: &SharedFsSpec) -> Vec<String> {
    vec![
        "--fd=3".into(),
        format!("--shared-dir={}", spec.shared_dir.display()),
        format!("--cache={}", spec.cache),
        // Container rootfs are mounts below the shared dir; give each its own st_dev in the
        // guest so inode numbers of different layers never collide.
        "--announce-submounts".into(),
        "--sandbox=namespace".into(),
        "--xattr".into(),
        format!("--xattrmap={GUEST_XATTR_MAP}"),
        // Warnings are routine (e.g. overlayfs without file handles on every rootfs); errors
        // reach the pod's log.
        "--log-level=error".into(),
        // As many descriptors as the shim may have; virtiofsd's default (1M) fails where the
        // hard limit is lower, with a warning in every pod's log.
        format!("--rlimit-nofile={}", nofile_hard_limit()),
    ]
}

fn nofile_hard_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn passes_dir_cache_and_fd() {
        let spec = SharedFsSpec {
            tag: "husk".into(),
            shared_dir: PathBuf::from("/run/husk/p/shared"),
            virtiofsd: PathBuf::from("/usr/libexec/virtiofsd"),
            cache: "never".into(),
        };
        let a = args(&spec);
        assert!(a.contains(&"--fd=3".to_string()));
        assert!(a.contains(&"--shared-dir=/run/husk/p/shared".to_string()));
        assert!(a.contains(&"--cache=never".to_string()));
        assert!(a.contains(&"--sandbox=namespace".to_string()));
        assert!(a.contains(&format!("--xattrmap={GUEST_XATTR_MAP}")));
    }
}
