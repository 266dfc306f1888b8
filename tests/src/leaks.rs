//! The leak checker: after a test, nothing it started may remain — no process, no mount,
//! no runtime state file, no shim socket.
//!
//! Attribution works with two tests running at once because everything a test creates
//! carries its tag (see [`crate::scope`]): its containerd's command line and environment,
//! the `-address` of every shim, the inherited `HUSK_TEST_DIR` marker of shims and their
//! children, and every container id (which also names VM sockets and state dirs). A
//! process is the test's if it mentions the tag or descends from one that does.
//! Processes of interest (QEMU, virtiofsd, shims) that started during the test but carry
//! no test marker at all cannot be attributed; they are reported as *suspects*
//! (warnings), never as another test's failure.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::mounts::{MountError, mount_points};
use crate::procfs::{ProcInfo, snapshot};
use crate::scope::MARKER_ENV;

/// Programs whose unattributed appearance during a test is worth a warning.
const VM_PROGRAMS: [&str; 4] = [
    "qemu-system-x86_64",
    "virtiofsd",
    "containerd-shim-husk-v2",
    "containerd-shim-runc-v2",
];
/// Where containerd (1.6+) puts shim sockets.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// How often [`LeakScope::wait_clean`] looks again.
const POLL: Duration = Duration::from_millis(100);

/// Leaks were found.
#[derive(Debug, thiserror::Error)]
pub enum LeakError {
    /// Something of the test remained past the grace period.
    #[error("leaked after the test (waited {waited:?}):\n{report}")]
    Leaked {
        /// How long we gave things to go away.
        waited: Duration,
        /// What remained.
        report: LeakReport,
    },
    /// Mounts could not be listed.
    #[error(transparent)]
    Mounts(#[from] MountError),
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct LeakReport {
    /// Live processes attributed to the test.
    pub processes: Vec<ProcInfo>,
    /// Mount points mentioning the test.
    pub mounts: Vec<PathBuf>,
    /// Runtime state files, sockets or cgroups of the test.
    pub paths: Vec<PathBuf>,
    /// Unattributable VM-related processes started during the test (warnings only).
    pub suspects: Vec<ProcInfo>,
}

impl LeakReport {
    /// No processes, mounts or paths (suspects do not count).
    pub fn is_clean(&self) -> bool {
        self.processes.is_empty() && self.mounts.is_empty() && self.paths.is_empty()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.processes {
            writeln!(f, "  process: {p}")?;
        }
        for m in &self.mounts {
            writeln!(f, "  mount: {}", m.display())?;
        }
        for p in &self.paths {
            writeln!(f, "  path: {}", p.display())?;
        }
        for p in &self.suspects {
            writeln!(
                f,
                "  warning: unattributed process started during the test: {p}"
            )?;
        }
        Ok(())
    }
}

/// The socket containerd (1.6/1.7) assigns to the shim of container `id`:
/// `/run/containerd/s/<hex sha256("<address>/<namespace>/<id>")>`.
pub fn shim_socket_path(address: &Path, namespace: &str, id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{}/{namespace}/{id}", address.display()).as_bytes());
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest))
}

/// What belongs to one test, and how to look for it.
#[derive(Debug, Clone)]
pub struct LeakScope {
    needle: String,
    namespace: String,
    address: PathBuf,
    exclude: Vec<i32>,
    since_ticks: u64,
}

impl LeakScope {
    /// Everything mentioning `needle` (the test tag); `address`/`namespace` locate shim
    /// sockets; processes started at or after `since_ticks` (clock ticks since boot) are
    /// considered for suspects.
    pub fn new(needle: &str, namespace: &str, address: &Path, since_ticks: u64) -> Self {
        Self {
            needle: needle.to_owned(),
            namespace: namespace.to_owned(),
            address: address.to_owned(),
            exclude: Vec::new(),
            since_ticks,
        }
    }

    /// Never reports `pid` (the test's own containerd while it is meant to run); its
    /// descendants still are.
    pub fn exclude_pid(&mut self, pid: i32) {
        self.exclude.push(pid);
    }

    /// Live processes of the test: those mentioning the needle and their descendants,
    /// minus excluded pids, zombies and the caller.
    pub fn attributed(&self, procs: &[ProcInfo]) -> Vec<ProcInfo> {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        let mut owned: HashSet<i32> = procs
            .iter()
            .filter(|p| p.mentions(&self.needle))
            .map(|p| p.pid)
            .collect();
        loop {
            let before = owned.len();
            for p in procs {
                if owned.contains(&p.ppid) {
                    owned.insert(p.pid);
                }
            }
            if owned.len() == before {
                break;
            }
        }
        procs
            .iter()
            .filter(|p| owned.contains(&p.pid))
            .filter(|p| p.pid != me && !self.exclude.contains(&p.pid) && !p.is_zombie())
            .cloned()
            .collect()
    }

    fn suspects(&self, procs: &[ProcInfo], attributed: &[ProcInfo]) -> Vec<ProcInfo> {
        let marker = format!("{MARKER_ENV}=");
        let mut marked: HashSet<i32> = procs
            .iter()
            .filter(|p| p.environ.iter().any(|e| e.starts_with(&marker)))
            .map(|p| p.pid)
            .collect();
        loop {
            let before = marked.len();
            for p in procs {
                if marked.contains(&p.ppid) {
                    marked.insert(p.pid);
                }
            }
            if marked.len() == before {
                break;
            }
        }
        procs
            .iter()
            .filter(|p| VM_PROGRAMS.contains(&p.name().as_str()))
            .filter(|p| p.start_ticks >= self.since_ticks && !p.is_zombie())
            .filter(|p| !marked.contains(&p.pid) && !attributed.iter().any(|a| a.pid == p.pid))
            .cloned()
            .collect()
    }

    /// Runtime state that names the test: shim sockets of `container_ids`, and entries
    /// containing the needle in runc/husk state dirs and the cgroup trees.
    fn paths(&self, container_ids: &[String]) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = container_ids
            .iter()
            .map(|id| shim_socket_path(&self.address, &self.namespace, id))
            .filter(|p| p.exists())
            .collect();
        let ns = &self.namespace;
        let state_dirs = [
            PathBuf::from("/run/husk"),
            Path::new("/run/husk").join(ns),
            PathBuf::from("/run/containerd/husk"),
            Path::new("/run/containerd/husk").join(ns),
            Path::new("/run/containerd/runc").join(ns),
        ];
        for dir in state_dirs {
            found.extend(entries_containing(&dir, &self.needle, 0));
        }
        found.extend(entries_containing(
            Path::new("/sys/fs/cgroup"),
            &self.needle,
            3,
        ));
        found
    }

    /// Looks once.
    pub fn check(&self, container_ids: &[String]) -> Result<LeakReport, LeakError> {
        let procs = snapshot();
        let processes = self.attributed(&procs);
        let suspects = self.suspects(&procs, &processes);
        let mounts = mount_points()?
            .into_iter()
            .filter(|m| m.to_string_lossy().contains(&self.needle))
            .collect();
        Ok(LeakReport {
            processes,
            mounts,
            paths: self.paths(container_ids),
            suspects,
        })
    }

    /// Looks until clean or `within` has passed (shims and VMs exit asynchronously after
    /// `ctr` returns); returns the clean report (possibly with suspects) or the leaks.
    pub fn wait_clean(
        &self,
        container_ids: &[String],
        within: Duration,
    ) -> Result<LeakReport, LeakError> {
        let start = Instant::now();
        loop {
            let report = self.check(container_ids)?;
            if report.is_clean() {
                return Ok(report);
            }
            if start.elapsed() >= within {
                return Err(LeakError::Leaked {
                    waited: within,
                    report,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// [`Self::kill_attributed`] after a failed test, listing on stderr what it killed.
    pub fn kill_and_report(&self) {
        let killed = self.kill_attributed();
        if !killed.is_empty() {
            eprintln!(
                "husk-tests: killed {} leftover process(es) of the test:",
                killed.len()
            );
            for p in &killed {
                eprintln!("  {p}");
            }
        }
    }

    /// SIGKILLs every attributed process (so one failed test cannot disturb the next);
    /// returns what it killed.
    pub fn kill_attributed(&self) -> Vec<ProcInfo> {
        let victims = self.attributed(&snapshot());
        for p in &victims {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        victims
    }
}

/// Entries under `dir` (recursing `depth` more levels) whose name contains `needle`.
fn entries_containing(dir: &Path, needle: &str, depth: usize) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            found.push(path);
        } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(entries_containing(&path, needle, depth - 1));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: i32, ppid: i32, argv: &[&str], env: &[&str]) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            state: 'S',
            start_ticks: 100,
            comm: "x".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            environ: env.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn shim_socket_matches_containerd() {
        // Observed with containerd 1.6.20: address /tmp/exp.C2R9/a.sock, ns husk-test, id t2.
        assert_eq!(
            shim_socket_path(Path::new("/tmp/exp.C2R9/a.sock"), "husk-test", "t2"),
            Path::new(
                "/run/containerd/s/d77dbc49ae6e6a30418e1218abd6c1d6e1b87b70ba808608109b433030d9d0f1"
            )
        );
    }

    #[test]
    fn attribution_separates_concurrent_tests() {
        let procs = vec![
            proc_(
                10,
                1,
                &["containerd", "--address", "/t/a-htA/cd.sock"],
                &["HUSK_TEST_DIR=/t/a-htA"],
            ),
            proc_(
                11,
                1,
                &["containerd", "--address", "/t/b-htB/cd.sock"],
                &["HUSK_TEST_DIR=/t/b-htB"],
            ),
            // A's shim, reparented to init, found by its -address.
            proc_(
                20,
                1,
                &["containerd-shim-husk-v2", "-address", "/t/a-htA/cd.sock"],
                &[],
            ),
            // A qemu with a scrubbed environment, child of A's shim.
            proc_(21, 20, &["qemu-system-x86_64", "-m", "256"], &[]),
            // B's virtiofsd, reparented, found by its inherited marker.
            proc_(30, 1, &["virtiofsd"], &["HUSK_TEST_DIR=/t/b-htB"]),
            // Unrelated qemu: no marker.
            proc_(40, 1, &["qemu-system-x86_64"], &[]),
        ];
        let mut a = LeakScope::new("htA", "husk-test", Path::new("/t/a-htA/cd.sock"), 50);
        a.exclude_pid(10);
        let pids = |v: Vec<ProcInfo>| v.iter().map(|p| p.pid).collect::<Vec<_>>();
        assert_eq!(pids(a.attributed(&procs)), [20, 21]);
        let b = LeakScope::new("htB", "husk-test", Path::new("/t/b-htB/cd.sock"), 50);
        assert_eq!(pids(b.attributed(&procs)), [11, 30]);
        let attributed = a.attributed(&procs);
        assert_eq!(pids(a.suspects(&procs, &attributed)), [40]);
    }

    #[test]
    fn finds_named_entries() {
        let dir = std::env::temp_dir().join(format!("husk-leaks-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("ns/pod-htZ")).unwrap();
        fs::create_dir_all(dir.join("other")).unwrap();
        assert_eq!(entries_containing(&dir, "htZ", 0), Vec::<PathBuf>::new());
        assert_eq!(
            entries_containing(&dir, "htZ", 1),
            vec![dir.join("ns/pod-htZ")]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
