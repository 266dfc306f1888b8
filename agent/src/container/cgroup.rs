//! A container's cgroup v2 directory: its processes, and signalling all of them.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use thiserror::Error;

const PROCS_FILE: &str = "cgroup.procs";
const KILL_FILE: &str = "cgroup.kill";

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds a malformed pid {line:?}")]
    Malformed { path: PathBuf, line: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sending signal {signal} to pid {pid}: {source}")]
    Kill {
        pid: u32,
        signal: i32,
        source: Errno,
    },
}

/// Pids in the cgroup at `dir` (empty if the cgroup does not exist).
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join(PROCS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Malformed {
                path: path.clone(),
                line: l.into(),
            })
        })
        .collect()
}

/// Sends `signal` to every process in the cgroup; processes that vanish meanwhile are fine.
/// Returns how many were signalled.
pub fn signal_all(dir: &Path, signal: i32) -> Result<usize, CgroupError> {
    let mut sent = 0;
    for pid in procs(dir)? {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        // SAFETY: kill has no memory-safety preconditions; raw > 0 targets one process.
        if unsafe { libc::kill(raw, signal) } == 0 {
            sent += 1;
        } else {
            match Errno::last() {
                Errno::ESRCH => {}
                source => {
                    return Err(CgroupError::Kill {
                        pid,
                        signal,
                        source,
                    });
                }
            }
        }
    }
    Ok(sent)
}

/// SIGKILLs everything in the cgroup, atomically through `cgroup.kill` when the kernel has it.
pub fn kill_all(dir: &Path) -> Result<(), CgroupError> {
    let kill_file = dir.join(KILL_FILE);
    // Never create the file: outside cgroupfs that would silently do nothing.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&kill_file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"1"));
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // No cgroup.kill (kernel < 5.14) or no cgroup at all.
            signal_all(dir, libc::SIGKILL).map(|_| ())
        }
        Err(source) => Err(CgroupError::Write {
            path: kill_file,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pids_and_tolerates_a_missing_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(procs(&tmp.path().join("gone")).unwrap().is_empty());
        std::fs::write(tmp.path().join(PROCS_FILE), "12\n345\n\n").unwrap();
        assert_eq!(procs(tmp.path()).unwrap(), vec![12, 345]);
        std::fs::write(tmp.path().join(PROCS_FILE), "12\nabc\n").unwrap();
        assert!(matches!(
            procs(tmp.path()),
            Err(CgroupError::Malformed { .. })
        ));
    }

    #[test]
    fn signalling_vanished_pids_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        // Larger than any pid_max: the pid cannot exist.
        std::fs::write(tmp.path().join(PROCS_FILE), "2147483000\n").unwrap();
        assert_eq!(signal_all(tmp.path(), 0).unwrap(), 0);
    }
}
