//! Kernel filesystems and cgroup v2 for the guest (the agent is the only init there is).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;
use thiserror::Error;

/// The cgroup v2 mount point.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Error)]
pub enum MountError {
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: Errno,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct KernelMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn kernel_mounts() -> [KernelMount; 7] {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let km = |fstype, target, flags, data| KernelMount {
        fstype,
        target,
        flags,
        data,
    };
    [
        km("proc", "/proc", hardened, None),
        km("sysfs", "/sys", hardened, None),
        km("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        // A private instance; ptmxmode lets the /dev/ptmx of this instance be opened.
        km(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        km(
            "tmpfs",
            "/dev/shm",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        km(
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        km("cgroup2", CGROUP_ROOT, hardened, Some("nsdelegate")),
    ]
}

/// Mounts proc, sysfs, devtmpfs, devpts, /dev/shm, /run and cgroup2; already-mounted targets
/// are left alone.
pub fn mount_kernel_filesystems() -> Result<(), MountError> {
    for m in kernel_mounts() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(m.target)
            .map_err(|source| MountError::CreateDir {
                path: m.target.into(),
                source,
            })?;
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Opens /dev/console on fds 0-2 if the kernel could not (no console node in the initramfs):
/// without it, logs would go nowhere.
pub fn ensure_console_stdio() {
    let missing = (0..=2).any(|fd| fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF));
    if !missing {
        return;
    }
    let Ok(console) = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    ) else {
        return;
    };
    for fd in 0..=2 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            let _ = nix::unistd::dup2(console, fd);
        }
    }
    if console > 2 {
        let _ = nix::unistd::close(console);
    }
}

/// Delegates every available controller to child cgroups (`+cpu +memory ...` in the root's
/// `cgroup.subtree_control`). Returns the controllers that could not be enabled.
pub fn enable_cgroup_controllers(root: &Path) -> Result<Vec<String>, MountError> {
    let available = root.join("cgroup.controllers");
    let controllers = std::fs::read_to_string(&available).map_err(|source| MountError::Read {
        path: available,
        source,
    })?;
    let control = root.join("cgroup.subtree_control");
    // One write per controller: one refusal (e.g. a busy cpuset) must not block the rest.
    let refused = controllers
        .split_whitespace()
        .filter(|c| std::fs::write(&control, format!("+{c}")).is_err())
        .map(str::to_owned)
        .collect();
    Ok(refused)
}
