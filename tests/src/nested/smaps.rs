//! A VM monitor's memory from `/proc/<pid>/smaps`, with the guest's RAM told apart: the
//! mapping(s) exactly the size of the guest memory (QEMU: the shared memfd backend; the
//! built-in monitor: its guest memory region) are the guest's, everything else is the
//! monitor's own. Used on the nested host to compare monitors.

use std::fmt;
use std::path::PathBuf;

/// `/proc/<pid>/smaps` could not be read (the process is gone, or not ours).
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct SmapsError {
    /// The file.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

/// Memory of one process, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set, all mappings.
    pub rss: u64,
    /// Proportional set size, all mappings.
    pub pss: u64,
    /// Resident pages of the guest RAM mapping(s).
    pub guest_rss: u64,
    /// This process's proportional share of them (the vhost-user helpers map guest RAM
    /// too, so shared pages are split among the mappers).
    pub guest_pss: u64,
    /// `Pss_Anon` of `smaps_rollup` (whole process; with an anonymous guest RAM mapping
    /// it includes the guest's touched pages).
    pub pss_anon: u64,
}

impl Memory {
    /// RSS without the guest RAM: what the monitor itself costs.
    pub fn monitor_rss(&self) -> u64 {
        self.rss.saturating_sub(self.guest_rss)
    }

    /// PSS without the share of guest RAM: what the process itself costs.
    pub fn own_pss(&self) -> u64 {
        self.pss.saturating_sub(self.guest_pss)
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vmm_rss_kib={} vmm_pss_kib={} guest_ram_rss_kib={} vmm_rss_excl_guest_kib={} \
             vmm_pss_anon_kib={}",
            self.rss,
            self.pss,
            self.guest_rss,
            self.monitor_rss(),
            self.pss_anon
        )
    }
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .strip_prefix(':')?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Reads `/proc/<pid>/smaps` and `smaps_rollup`; `guest_kib` is the guest RAM size.
pub fn of_process(pid: u32, guest_kib: u64) -> Result<Memory, SmapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let smaps = std::fs::read_to_string(&path).map_err(|source| SmapsError { path, source })?;
    let mut m = parse_smaps(&smaps, guest_kib);
    if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        m.pss_anon = rollup
            .lines()
            .find_map(|l| field(l, "Pss_Anon"))
            .unwrap_or_default();
    }
    Ok(m)
}

/// PSS of any process (for helper processes), 0 if it is gone.
pub fn pss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| field(l, "Pss")))
        .unwrap_or_default()
}

fn parse_smaps(smaps: &str, guest_kib: u64) -> Memory {
    let mut m = Memory::default();
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(v) = field(line, "Size") {
            size = v;
        } else if let Some(v) = field(line, "Rss") {
            m.rss += v;
            if size == guest_kib {
                m.guest_rss += v;
            }
        } else if let Some(v) = field(line, "Pss") {
            m.pss += v;
            if size == guest_kib {
                m.guest_pss += v;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_mapping_is_told_apart() {
        let smaps = "\
7f00-7f10 rw-s 00000000 00:01 5 /memfd:mem (deleted)
Size:             262144 kB
Rss:               40000 kB
Pss:               40000 kB
5500-5600 r-xp 00000000 08:01 7 /usr/bin/qemu-system-x86_64
Size:               8000 kB
Rss:                6000 kB
Pss:                3000 kB
Pss_Dirty:             0 kB
";
        let m = parse_smaps(smaps, 262_144);
        assert_eq!((m.rss, m.pss, m.guest_rss), (46_000, 43_000, 40_000));
        assert_eq!(m.monitor_rss(), 6_000);
        assert_eq!((m.guest_pss, m.own_pss()), (40_000, 3_000));
    }
}
