//! Pod-wide guest state (hostname, the shared virtio-fs directory) and the VM's end.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use slog::{Logger, crit, debug, info};
use thiserror::Error;

/// Linux's HOST_NAME_MAX.
const MAX_HOSTNAME_LEN: usize = 64;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("sandbox_id is empty")]
    MissingId,
    #[error("hostname is {0} bytes; at most {MAX_HOSTNAME_LEN} are allowed")]
    HostnameTooLong(usize),
    #[error("shared_fs_tag {0:?} is not a valid virtio-fs tag")]
    BadTag(String),
    #[error("the sandbox already exists as {0:?} with different settings")]
    AlreadyExists(String),
    #[error("setting the hostname: {0}")]
    Hostname(#[source] nix::Error),
    #[error("creating {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting virtio-fs tag {tag:?} on {dir}: {source}")]
    Mount {
        tag: String,
        dir: PathBuf,
        source: nix::Error,
    },
}

/// What CreateSandbox asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub id: String,
    pub hostname: String,
    /// Empty: no shared directory (nothing is mounted).
    pub shared_fs_tag: String,
}

pub struct Sandbox {
    config: Mutex<Option<SandboxConfig>>,
    shared_dir: PathBuf,
    log: Logger,
}

impl Sandbox {
    pub fn new(shared_dir: PathBuf, log: Logger) -> Self {
        Self {
            config: Mutex::new(None),
            shared_dir,
            log,
        }
    }

    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// Sets the hostname and mounts the shared directory. Repeating the same request is a
    /// no-op (a retrying shim must not fail); a different one is ALREADY_EXISTS. Blocks while
    /// mounting.
    pub fn create(&self, config: SandboxConfig) -> Result<(), SandboxError> {
        validate(&config)?;
        // Held across the mount so two concurrent requests cannot both mount.
        let mut current = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = current.as_ref() {
            return if *existing == config {
                Ok(())
            } else {
                Err(SandboxError::AlreadyExists(existing.id.clone()))
            };
        }
        if !config.hostname.is_empty() {
            nix::unistd::sethostname(&config.hostname).map_err(SandboxError::Hostname)?;
        }
        if !config.shared_fs_tag.is_empty() {
            self.mount_shared(&config.shared_fs_tag)?;
        }
        info!(self.log, "sandbox created"; "sandbox" => &config.id, "shared_fs_tag" => &config.shared_fs_tag);
        *current = Some(config);
        Ok(())
    }

    fn mount_shared(&self, tag: &str) -> Result<(), SandboxError> {
        let dir = &self.shared_dir;
        std::fs::create_dir_all(dir).map_err(|source| SandboxError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        // nodev: device nodes from images have no business on the shared directory.
        mount(
            Some(tag),
            dir,
            Some("virtiofs"),
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|source| SandboxError::Mount {
            tag: tag.to_owned(),
            dir: dir.clone(),
            source,
        })?;
        // Shared: containers' namespaces receive what is mounted here later (their volume
        // submounts), and `rshared` volumes carry one container's mounts to the others.
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| SandboxError::Mount {
            tag: tag.to_owned(),
            dir: dir.clone(),
            source,
        })
    }
}

fn validate(config: &SandboxConfig) -> Result<(), SandboxError> {
    if config.id.is_empty() {
        return Err(SandboxError::MissingId);
    }
    if config.hostname.len() > MAX_HOSTNAME_LEN {
        return Err(SandboxError::HostnameTooLong(config.hostname.len()));
    }
    // virtio-fs tags are at most 36 bytes and never contain NUL or whitespace.
    let tag = &config.shared_fs_tag;
    if tag.len() > 36 || tag.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(SandboxError::BadTag(tag.clone()));
    }
    Ok(())
}

/// Ends the VM: flush, detach the shared directory, reboot. The monitors end the VM on a
/// reboot (QEMU: `reboot=t` and `-no-reboot`; husk-vmm: `reboot=k`, the i8042 reset) (RB_POWER_OFF would only halt without ACPI). If
/// even that fails, PID 1 exits, which panics the kernel — `panic=-1` reboots, same end.
pub fn power_off(shared_dir: &Path, log: &Logger) -> Infallible {
    nix::unistd::sync();
    if let Err(e) = umount2(shared_dir, MntFlags::MNT_DETACH) {
        debug!(log, "unmounting the shared directory"; "error" => %e);
    }
    nix::unistd::sync();
    info!(log, "powering off");
    let err = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    crit!(log, "reboot failed; exiting PID 1 as a last resort"; "error" => %err);
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, hostname: &str, tag: &str) -> SandboxConfig {
        SandboxConfig {
            id: id.into(),
            hostname: hostname.into(),
            shared_fs_tag: tag.into(),
        }
    }

    #[test]
    fn validates_requests() {
        assert!(matches!(
            validate(&config("", "h", "t")),
            Err(SandboxError::MissingId)
        ));
        assert!(matches!(
            validate(&config("s", &"h".repeat(65), "t")),
            Err(SandboxError::HostnameTooLong(65))
        ));
        assert!(matches!(
            validate(&config("s", "h", "a b")),
            Err(SandboxError::BadTag(_))
        ));
        assert!(validate(&config("s", "", "")).is_ok());
    }

    #[test]
    fn repeating_is_idempotent_and_differing_is_refused() {
        let sandbox = Sandbox::new(
            "/nonexistent".into(),
            Logger::root(slog::Discard, slog::o!()),
        );
        // Empty hostname and tag: nothing touches the machine running the test.
        sandbox.create(config("s", "", "")).unwrap();
        sandbox.create(config("s", "", "")).unwrap();
        assert!(matches!(
            sandbox.create(config("other", "", "")),
            Err(SandboxError::AlreadyExists(id)) if id == "s"
        ));
    }
}
