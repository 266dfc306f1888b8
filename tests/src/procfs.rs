//! A snapshot of the host's processes from `/proc`, with what leak attribution needs:
//! parent, state, start time, command line and environment.

use std::fs;

/// One process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// State letter from `/proc/<pid>/stat` (`Z` = zombie).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
    /// `comm` (15 characters at most).
    pub comm: String,
    /// Command line arguments.
    pub argv: Vec<String>,
    /// Environment (`KEY=value`); empty if unreadable.
    pub environ: Vec<String>,
}

impl ProcInfo {
    /// Program name: the base name of `argv[0]`, or `comm` for kernel threads.
    pub fn name(&self) -> String {
        self.argv
            .first()
            .and_then(|a| a.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map_or_else(|| self.comm.clone(), str::to_owned)
    }

    /// The command line joined by spaces.
    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }

    /// Whether the command line or the environment contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.argv.iter().any(|a| a.contains(needle))
            || self.environ.iter().any(|e| e.contains(needle))
    }

    /// A zombie holds no resources but its pid; its parent will reap it.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

impl std::fmt::Display for ProcInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut cmd = self.cmdline();
        if cmd.len() > 300 {
            let mut cut = 300;
            while !cmd.is_char_boundary(cut) {
                cut -= 1;
            }
            cmd.truncate(cut);
            cmd.push('…');
        }
        write!(
            f,
            "pid {} (ppid {}, {}) {}",
            self.pid, self.ppid, self.state, cmd
        )
    }
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ... starttime(22nd field) ...`.
/// `comm` may contain spaces and parentheses, so split at the *last* `)`.
fn parse_stat(stat: &str) -> Option<(String, char, i32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, state, ppid, start))
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Reads one process; `None` if it vanished meanwhile.
pub fn read_process(pid: i32) -> Option<ProcInfo> {
    let dir = format!("/proc/{pid}");
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    let (comm, state, ppid, start_ticks) = parse_stat(&stat)?;
    let argv = fs::read(format!("{dir}/cmdline"))
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    let environ = fs::read(format!("{dir}/environ"))
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid,
        state,
        start_ticks,
        comm,
        argv,
        environ,
    })
}

/// Every process visible now (processes that exit while we read are skipped).
pub fn snapshot() -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_process)
        .collect()
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ).
pub const USER_HZ: f64 = 100.0;

/// utime + stime of a process, in clock ticks (0 once it is gone).
pub fn cpu_ticks(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let stat =
            "1234 (a) b (c)) S 99 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5555 1000 10";
        assert_eq!(
            parse_stat(stat),
            Some(("a) b (c)".to_owned(), 'S', 99, 5555))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sees_itself() {
        let me = i32::try_from(std::process::id()).unwrap();
        let p = read_process(me).unwrap();
        assert_eq!(p.pid, me);
        assert!(!p.argv.is_empty());
        assert!(snapshot().iter().any(|q| q.pid == me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("HUSK_PROCFS_TEST", "needle-xyz")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Between fork and exec the child still shows our command line, and during exec
        // `comm` changes before the new argv/environ are readable: wait for all three.
        let start = std::time::Instant::now();
        let c = loop {
            let c = read_process(pid).unwrap();
            let execed = c.argv.first().is_some_and(|a| a == "sleep") && !c.environ.is_empty();
            if execed || start.elapsed() > std::time::Duration::from_secs(5) {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(c.mentions("needle-xyz"), "{c:?}");
        assert_eq!(c.name(), "sleep");
        assert_eq!(c.ppid, me);
        assert!(c.start_ticks >= p.start_ticks);
    }
}
