//! `ctr` bound to one containerd socket and namespace, with deadlines.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{Cmd, CmdError, Output};

/// How often task state is polled.
const POLL: Duration = Duration::from_millis(100);

/// Errors from ctr helpers.
#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    /// The ctr command failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A task did not reach the expected state in time.
    #[error("task {id} did not become {want} within {after:?} (last seen: {last})")]
    TaskState {
        /// The task.
        id: String,
        /// Wanted status, e.g. `RUNNING`.
        want: String,
        /// The deadline.
        after: Duration,
        /// Last observed status.
        last: String,
    },
    /// An import did not produce the expected image.
    #[error(
        "importing {archive} did not create image {reference}; `ctr images ls -q` shows: {listed:?}"
    )]
    ImportMissing {
        /// The archive imported.
        archive: PathBuf,
        /// The expected reference.
        reference: String,
        /// What is there instead.
        listed: Vec<String>,
    },
}

/// `ctr -a <address> -n <namespace> ...`.
#[derive(Debug, Clone)]
pub struct Ctr {
    program: PathBuf,
    address: PathBuf,
    namespace: String,
    timeout: Duration,
}

impl Ctr {
    /// ctr (the one on `PATH`) for `address`/`namespace`; each command gets `timeout`
    /// unless overridden.
    pub fn new(address: &Path, namespace: &str, timeout: Duration) -> Self {
        Self {
            program: PathBuf::from("ctr"),
            address: address.to_owned(),
            namespace: namespace.to_owned(),
            timeout,
        }
    }

    /// Runs this ctr binary instead (the one of the containerd release being talked to,
    /// see [`crate::containerd::ContainerdBinaries`]).
    #[must_use]
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// The ctr binary.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The containerd socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// A ctr command with `args`, ready to adjust (stdin, timeout) and run.
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Cmd::new(&self.program)
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .timeout(self.timeout)
    }

    /// Runs ctr and returns its output whatever the exit status.
    pub fn run<I, S>(&self, args: I) -> Result<Output, CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd(args).output()
    }

    /// Runs ctr; a non-zero exit is an error.
    pub fn checked<I, S>(&self, args: I) -> Result<Output, CmdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd(args).checked()
    }

    /// `ctr images import` of an OCI archive, then checks `reference` exists.
    pub fn import(&self, archive: &Path, reference: &str) -> Result<(), CtrError> {
        self.cmd(["images", "import"])
            .arg(archive)
            .timeout(self.timeout.max(Duration::from_secs(120)))
            .checked()?;
        let listed = self.list(&["images", "ls", "-q"])?;
        if listed.iter().any(|r| r == reference) {
            Ok(())
        } else {
            Err(CtrError::ImportMissing {
                archive: archive.to_owned(),
                reference: reference.to_owned(),
                listed,
            })
        }
    }

    fn list(&self, args: &[&str]) -> Result<Vec<String>, CmdError> {
        Ok(self
            .checked(args)?
            .stdout_text()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The daemon's version, from the `Server:` part of `ctr version`.
    pub fn server_version(&self) -> Result<Option<String>, CmdError> {
        Ok(server_version(&self.checked(["version"])?.stdout_text()))
    }

    /// Container ids (`ctr containers ls -q`).
    pub fn containers(&self) -> Result<Vec<String>, CmdError> {
        self.list(&["containers", "ls", "-q"])
    }

    /// Task ids (`ctr tasks ls -q`).
    pub fn tasks(&self) -> Result<Vec<String>, CmdError> {
        self.list(&["tasks", "ls", "-q"])
    }

    /// The status column of `ctr tasks ls` for `id` (`RUNNING`, `STOPPED`, ...), or
    /// `None` if there is no such task.
    pub fn task_status(&self, id: &str) -> Result<Option<String>, CmdError> {
        let out = self.checked(["tasks", "ls"])?.stdout_text();
        Ok(out.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().map(|s| s.to_string()))?
        }))
    }

    /// Polls until task `id` has status `want` or `within` passes.
    pub fn wait_task_status(&self, id: &str, want: &str, within: Duration) -> Result<(), CtrError> {
        let start = Instant::now();
        loop {
            let status = self.task_status(id)?;
            if status.as_deref() == Some(want) {
                return Ok(());
            }
            if start.elapsed() >= within {
                return Err(CtrError::TaskState {
                    id: id.to_owned(),
                    want: want.to_owned(),
                    after: within,
                    last: status.unwrap_or_else(|| "no such task".to_owned()),
                });
            }
            thread::sleep(POLL);
        }
    }
}

/// The `Version:` line after `Server:` in `ctr version` output.
fn server_version(text: &str) -> Option<String> {
    text.lines()
        .skip_while(|l| l.trim() != "Server:")
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_is_read_from_the_server_part() {
        let out = "Client:\n  Version:  2.1.9+unknown\n  Revision: \n\nServer:\n  Version:  2.1.8\n  UUID: x\n";
        assert_eq!(server_version(out).as_deref(), Some("2.1.8"));
        assert_eq!(server_version("Client:\n  Version: 1\n"), None);
    }
}
