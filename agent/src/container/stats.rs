//! A container cgroup's figures for ContainerStats: the cgroup v2 files containerd's
//! `io.containerd.cgroups.v2.Metrics` is made of, read as the guest kernel reports them.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Files holding one number (or `max`).
const SINGLE_VALUE_FILES: [&str; 7] = [
    "memory.current",
    "memory.max",
    "memory.peak",
    "memory.swap.current",
    "memory.swap.max",
    "pids.current",
    "pids.max",
];
/// Files of `key value` lines.
const FLAT_KEYED_FILES: [&str; 3] = ["cpu.stat", "memory.stat", "memory.events"];
const IO_STAT_FILE: &str = "io.stat";

#[derive(Debug, Error)]
pub enum StatsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a cgroup figure")]
    Malformed { path: PathBuf, text: String },
}

/// One device's line of `io.stat`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IoDevice {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    /// See `ContainerStatsResponse.counters` in the protocol.
    pub counters: HashMap<String, u64>,
    pub io: Vec<IoDevice>,
}

/// Reads the figures of the cgroup at `dir`; files the kernel does not offer are left out.
pub fn read(dir: &Path) -> Result<Figures, StatsError> {
    let mut figures = Figures::default();
    for file in SINGLE_VALUE_FILES {
        if let Some((path, text)) = read_optional(dir, file)? {
            figures
                .counters
                .insert(file.to_owned(), number(&path, text.trim())?);
        }
    }
    for file in FLAT_KEYED_FILES {
        if let Some((path, text)) = read_optional(dir, file)? {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let (key, value) = line.split_once(' ').ok_or_else(|| malformed(&path, line))?;
                figures
                    .counters
                    .insert(format!("{file}:{key}"), number(&path, value.trim())?);
            }
        }
    }
    if let Some((path, text)) = read_optional(dir, IO_STAT_FILE)? {
        figures.io = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| io_device(&path, l))
            .collect::<Result<_, _>>()?;
    }
    Ok(figures)
}

/// `oom_kill` of the cgroup's `memory.events` (its whole subtree); 0 if unreadable.
pub fn oom_kills(dir: &Path) -> u64 {
    let Ok(Some((_, text))) = read_optional(dir, "memory.events") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_optional(dir: &Path, file: &str) -> Result<Option<(PathBuf, String)>, StatsError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StatsError::Read { path, source }),
    }
}

fn malformed(path: &Path, text: &str) -> StatsError {
    StatsError::Malformed {
        path: path.to_path_buf(),
        text: text.to_owned(),
    }
}

/// A figure; `max` (no limit) is `u64::MAX`, as containerd reports it.
fn number(path: &Path, text: &str) -> Result<u64, StatsError> {
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|_| malformed(path, text))
}

/// `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`
fn io_device(path: &Path, line: &str) -> Result<IoDevice, StatsError> {
    let mut words = line.split_whitespace();
    let device = words.next().ok_or_else(|| malformed(path, line))?;
    let (major, minor) = device
        .split_once(':')
        .ok_or_else(|| malformed(path, line))?;
    let mut entry = IoDevice {
        major: number(path, major)?,
        minor: number(path, minor)?,
        ..Default::default()
    };
    for word in words {
        let (key, value) = word.split_once('=').ok_or_else(|| malformed(path, line))?;
        let value = number(path, value)?;
        match key {
            "rbytes" => entry.rbytes = value,
            "wbytes" => entry.wbytes = value,
            "rios" => entry.rios = value,
            "wios" => entry.wios = value,
            _ => {}
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_files_that_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |f: &str, t: &str| std::fs::write(tmp.path().join(f), t).unwrap();
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("pids.current", "3\n");
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write("memory.stat", "anon 8192\ninactive_file 1024\n");
        write("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        write(
            "io.stat",
            "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let f = read(tmp.path()).unwrap();
        assert_eq!(f.counters["memory.current"], 4096);
        assert_eq!(f.counters["memory.max"], u64::MAX);
        assert_eq!(f.counters["pids.current"], 3);
        assert_eq!(f.counters["cpu.stat:usage_usec"], 1500);
        assert_eq!(f.counters["memory.stat:inactive_file"], 1024);
        assert_eq!(f.counters["memory.events:oom_kill"], 1);
        assert!(!f.counters.contains_key("memory.peak"));
        assert_eq!(oom_kills(tmp.path()), 1);
        assert_eq!(oom_kills(&tmp.path().join("gone")), 0);
        assert_eq!(
            f.io,
            vec![IoDevice {
                major: 254,
                minor: 0,
                rbytes: 10,
                wbytes: 20,
                rios: 1,
                wios: 2
            }]
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cpu.stat"), "usage_usec lots\n").unwrap();
        let err = read(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("cpu.stat"), "{err}");
    }
}
