//! Pausing a container: the cgroup v2 freezer of its cgroup.
//!
//! Writing `cgroup.freeze` only asks; the kernel reports the cgroup frozen in
//! `cgroup.events` once every task stopped. Like runc, a pause that does not complete in
//! time is undone rather than left half-frozen.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

const FREEZE_FILE: &str = "cgroup.freeze";
const EVENTS_FILE: &str = "cgroup.events";
/// How often the events file is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum FreezerError {
    #[error("the container's cgroup {0} has no freezer (cgroup v2 on Linux 5.2 or later)")]
    Unsupported(PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cgroup {path} was not {state} within {within:?}; the request was undone")]
    Timeout {
        path: PathBuf,
        state: &'static str,
        within: Duration,
    },
}

/// Whether the cgroup at `dir` is asked to be frozen (a missing cgroup is not).
pub fn is_frozen(dir: &Path) -> Result<bool, FreezerError> {
    let path = dir.join(FREEZE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim() == "1"),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FreezerError::Read { path, source }),
    }
}

/// Freezes (`frozen`) or thaws the cgroup at `dir` and waits until the kernel reports it.
pub fn set_frozen(dir: &Path, frozen: bool, within: Duration) -> Result<(), FreezerError> {
    request(dir, frozen)?;
    match wait_reported(dir, frozen, within) {
        Err(e @ FreezerError::Timeout { .. }) if frozen => {
            // Never leave a cgroup half-frozen behind a failed pause.
            let _ = request(dir, false);
            Err(e)
        }
        other => other,
    }
}

fn request(dir: &Path, frozen: bool) -> Result<(), FreezerError> {
    let path = dir.join(FREEZE_FILE);
    // Never create the file: outside cgroupfs that would silently do nothing.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, if frozen { b"1" } else { b"0" }));
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(FreezerError::Unsupported(dir.to_path_buf()))
        }
        Err(source) => Err(FreezerError::Write { path, source }),
    }
}

fn wait_reported(dir: &Path, frozen: bool, within: Duration) -> Result<(), FreezerError> {
    let path = dir.join(EVENTS_FILE);
    let wanted = if frozen { "frozen 1" } else { "frozen 0" };
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).map_err(|source| FreezerError::Read {
            path: path.clone(),
            source,
        })?;
        if text.lines().any(|l| l.trim() == wanted) {
            return Ok(());
        }
        if start.elapsed() >= within {
            return Err(FreezerError::Timeout {
                path: dir.to_path_buf(),
                state: if frozen { "frozen" } else { "thawed" },
                within,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(freeze: &str, events: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FREEZE_FILE), freeze).unwrap();
        std::fs::write(tmp.path().join(EVENTS_FILE), events).unwrap();
        tmp
    }

    #[test]
    fn freezing_waits_for_the_kernel_report() {
        let tmp = cgroup("0\n", "populated 1\nfrozen 1\n");
        set_frozen(tmp.path(), true, Duration::from_millis(50)).unwrap();
        assert!(is_frozen(tmp.path()).unwrap());
    }

    #[test]
    fn a_freeze_that_never_completes_is_undone() {
        let tmp = cgroup("0\n", "populated 1\nfrozen 0\n");
        let err = set_frozen(tmp.path(), true, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, FreezerError::Timeout { .. }), "{err}");
        assert!(!is_frozen(tmp.path()).unwrap(), "left half-frozen");
    }

    #[test]
    fn a_cgroup_without_freezer_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = set_frozen(tmp.path(), true, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, FreezerError::Unsupported(_)), "{err}");
        assert!(!tmp.path().join(FREEZE_FILE).exists(), "created the file");
        assert!(!is_frozen(&tmp.path().join("gone")).unwrap());
    }
}
