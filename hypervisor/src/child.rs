//! Supervised helper processes (the VMM, virtiofsd): spawned so they die with the shim,
//! with bounded capture of their output and an exit notification.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slog::{Logger, debug, info, warn};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::vmm::VmmError;

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 20;
/// Longer output lines are cut: a hostile guest controls the serial console's content.
const MAX_LINE_BYTES: usize = 1024;
/// Console/log lines forwarded to the shim log per second; the rest are counted and dropped.
const MAX_LINES_PER_SECOND: u32 = 50;
/// How long [`Supervised::stop`] waits, once the process ended, for its last output lines
/// (its exit reason, say) to reach the log. A descendant holding the pipes open costs no
/// more than this.
const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// A child process that is killed when this handle (or the whole shim) goes away.
pub(crate) struct Supervised {
    role: &'static str,
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    kill: mpsc::Sender<()>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Output forwarders started, and how many have reached the end of their pipe.
    forwarders: usize,
    drained: watch::Receiver<usize>,
}

/// What to do with a child's stdout.
#[derive(Clone, Copy)]
pub(crate) enum Stdout {
    /// Forward as log lines (the guest serial console).
    Log,
    Null,
}

impl Supervised {
    /// Spawns `cmd`. `inherit` are descriptors the child receives as fds 3, 4, … (a
    /// pre-bound listener, a pod's taps); no other descriptor above stderr survives the exec.
    pub(crate) fn spawn(
        role: &'static str,
        mut cmd: Command,
        stdout: Stdout,
        inherit: Vec<OwnedFd>,
        log: &Logger,
    ) -> Result<Self, VmmError> {
        cmd.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(match stdout {
                Stdout::Log => Stdio::piped(),
                Stdout::Null => Stdio::null(),
            })
            .kill_on_drop(true);
        if inherit.len() > crate::fd_passing::MAX_INHERITED {
            return Err(VmmError::Spawn {
                what: role,
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            });
        }
        let inherit_raw: Vec<RawFd> = inherit.iter().map(AsRawFd::as_raw_fd).collect();
        let parent = std::process::id();
        // Bounded by MAX_INHERITED above.
        let first_closed = 3 + u32::try_from(inherit_raw.len()).unwrap_or(0);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (prctl, getppid, dup2, fcntl, kill, close_range) on fds it owns.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                // Die with the shim: a stray VM must never outlive its pod.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The shim may have died between fork and prctl.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                if !inherit_raw.is_empty() {
                    crate::fd_passing::inherit_from_fd3(&inherit_raw)?;
                }
                // Whatever the shim holds without O_CLOEXEC stays behind. CLOEXEC rather
                // than close: std's exec-error pipe must live until the exec.
                if libc::syscall(
                    libc::SYS_close_range,
                    first_closed,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| VmmError::Spawn { what: role, source })?;
        drop(inherit);
        let pid = child.id().unwrap_or_default();
        let log = log.new(slog::o!("process" => role, "pid" => pid));
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (drained_tx, drained) = watch::channel(0usize);
        let drained_tx = Arc::new(drained_tx);
        let mut forwarders = 0;
        if let Some(err) = child.stderr.take() {
            forwarders += 1;
            let done = drained_tx.clone();
            let (log, tail) = (log.clone(), tail.clone());
            tokio::spawn(async move {
                forward_lines(err, log, Some(tail)).await;
                done.send_modify(|n| *n += 1);
            });
        }
        if let Some(out) = child.stdout.take() {
            forwarders += 1;
            let (done, log) = (drained_tx, log.clone());
            tokio::spawn(async move {
                forward_lines(out, log, None).await;
                done.send_modify(|n| *n += 1);
            });
        }
        let (exit_tx, exit) = watch::channel(None);
        let (kill, kill_rx) = mpsc::channel::<()>(1);
        tokio::spawn(reap(child, kill_rx, exit_tx, log));
        Ok(Self {
            role,
            pid,
            exit,
            kill,
            tail,
            forwarders,
            drained,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn role(&self) -> &'static str {
        self.role
    }

    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    #[cfg(test)]
    pub(crate) fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    pub(crate) fn stderr_tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Waits up to `grace` for the process to end by itself, then kills it and waits for it.
    pub(crate) async fn stop(&self, grace: Duration) -> ExitStatus {
        let mut exit = self.exit.clone();
        if tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_err()
        {
            let _ = self.kill.try_send(());
        }
        // After a kill the wait completes promptly; bound it anyway.
        let status = match tokio::time::timeout(
            Duration::from_secs(5),
            exit.wait_for(Option::is_some),
        )
        .await
        {
            Ok(Ok(status)) => status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
            _ => ExitStatus::from_raw(libc::SIGKILL),
        };
        let mut drained = self.drained.clone();
        let _ =
            tokio::time::timeout(DRAIN_WITHIN, drained.wait_for(|n| *n >= self.forwarders)).await;
        status
    }
}

/// Waits for `child` (killing it when asked) and publishes how it ended.
async fn reap(
    mut child: tokio::process::Child,
    mut kill_rx: mpsc::Receiver<()>,
    exit_tx: watch::Sender<Option<ExitStatus>>,
    log: Logger,
) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = kill_rx.recv() => {
            // start_kill is a no-op error if the child was already reaped.
            let _ = child.start_kill();
            child.wait().await
        }
    };
    match status {
        Ok(status) => {
            debug!(log, "process ended"; "status" => describe(status));
            let _ = exit_tx.send(Some(status));
        }
        Err(e) => {
            warn!(log, "waiting for process failed"; "error" => %e);
            let _ = exit_tx.send(Some(ExitStatus::from_raw(libc::SIGKILL)));
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Nothing may outlive its handle; a no-op if the process already ended.
        let _ = self.kill.try_send(());
    }
}

/// "exited with status N" / "killed by signal N".
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

async fn forward_lines<R: AsyncRead + Unpin>(
    stream: R,
    log: Logger,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, stream);
    let mut buf = Vec::with_capacity(MAX_LINE_BYTES);
    let mut window = Instant::now();
    let (mut in_window, mut dropped) = (0u32, 0u64);
    loop {
        buf.clear();
        match read_bounded_line(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = husk_protocol::guest_text::escape(String::from_utf8_lossy(&buf).trim_end());
        if let Some(tail) = &tail {
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                warn!(log, "output lines dropped by rate limit"; "count" => dropped);
            }
            window = Instant::now();
            in_window = 0;
            dropped = 0;
        }
        if in_window < MAX_LINES_PER_SECOND {
            in_window += 1;
            info!(log, "{}", line);
        } else {
            dropped += 1;
        }
    }
}

/// Reads one line of at most MAX_LINE_BYTES; the rest of a longer line is skipped.
async fn read_bounded_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let n = chunk.len();
        let room = MAX_LINE_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..n.min(room)]);
        r.consume(n);
        total += n;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_line_cuts_long_lines_and_keeps_the_next() {
        let long = "x".repeat(MAX_LINE_BYTES * 3);
        let input = format!("{long}\nshort\n");
        let mut r = BufReader::new(input.as_bytes());
        let mut buf = Vec::new();
        read_bounded_line(&mut r, &mut buf).await.unwrap();
        assert_eq!(buf.len(), MAX_LINE_BYTES);
        buf.clear();
        read_bounded_line(&mut r, &mut buf).await.unwrap();
        assert_eq!(buf, b"short\n");
    }

    #[tokio::test]
    async fn forwarded_lines_are_escaped() {
        let log = Logger::root(slog::Discard, slog::o!());
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let input = "ok\rlevel=error msg=forged\u{1b}[2K\n".as_bytes();
        forward_lines(input, log, Some(tail.clone())).await;
        let lines: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(lines, ["ok\\rlevel=error msg=forged\\u{1b}[2K"]);
    }

    #[tokio::test]
    async fn supervised_child_reports_exit_and_stderr() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; echo last words >&2; exit 3"]);
        let child = Supervised::spawn("test", cmd, Stdout::Null, Vec::new(), &log).unwrap();
        let status = child.stop(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(3));
        // What it said last (a monitor's exit reason) is forwarded by the time stop returns.
        let tail = child.stderr_tail();
        assert!(
            tail.contains("boom") && tail.ends_with("last words"),
            "{tail:?}"
        );
    }

    /// A descendant that keeps the output pipe open does not hold `stop` for long.
    #[tokio::test]
    async fn stop_does_not_wait_for_an_inheritor_of_the_pipes() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & echo $! >&2; exit 0"]);
        let child = Supervised::spawn("test", cmd, Stdout::Log, Vec::new(), &log).unwrap();
        let started = Instant::now();
        let status = child.stop(Duration::from_secs(5)).await;
        let took = started.elapsed();
        if let Ok(pid) = child.stderr_tail().trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(status.success());
        assert!(took < Duration::from_secs(30), "stop took {took:?}");
    }

    /// Descriptors arrive from fd 3 on, in order, whatever numbers they had; nothing else
    /// the parent holds is inherited.
    #[tokio::test]
    async fn inherited_descriptors_arrive_from_fd_3_in_order() {
        let log = Logger::root(slog::Discard, slog::o!());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let stray = std::fs::File::open("/dev/null").unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo one >&3; echo two >&4; ls /proc/self/fd > {}",
            out.display()
        ));
        let child = Supervised::spawn("fds", cmd, Stdout::Null, vec![w1, w2], &log).unwrap();
        let status = child.stop(Duration::from_secs(5)).await;
        assert!(status.success(), "{status:?}: {}", child.stderr_tail());
        for (r, want) in [(r1, "one\n"), (r2, "two\n")] {
            let mut got = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut got).unwrap();
            assert_eq!(got, want);
        }
        let fds = std::fs::read_to_string(&out).unwrap();
        let numbers: Vec<u32> = fds.lines().filter_map(|l| l.trim().parse().ok()).collect();
        // 0-2, the two passed, and the one `ls` opens for /proc/self/fd.
        assert!(numbers.iter().all(|&n| n <= 5), "{numbers:?}");
        drop(stray);
    }

    #[tokio::test]
    async fn stop_kills_after_grace() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let child = Supervised::spawn("sleeper", cmd, Stdout::Null, Vec::new(), &log).unwrap();
        let status = child.stop(Duration::from_millis(50)).await;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(child.has_exited());
    }
}
