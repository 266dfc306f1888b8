//! A command running in the background: output collected on threads (bounded even if
//! a grandchild keeps a pipe open), deadline enforcement, and process-group kill.

use std::io::Read;
use std::process::Child;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

use super::{CmdError, Output, tail};

/// After the command exits, how long its output pipes may stay open (held by a
/// grandchild) before we stop reading.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Reader = Box<dyn Read + Send>;

/// A pty master reports EIO once every slave fd is closed: that is EOF.
pub(super) struct PtyReader(pub(super) std::fs::File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

/// Reads a pipe on a thread into a shared buffer, so a reader blocked by a grandchild
/// holding the pipe cannot block us forever.
pub(super) struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collector {
    pub(super) fn start(reader: Reader) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = Arc::clone(&buf);
        thread::spawn(move || {
            let mut reader = reader;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => shared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Self { buf, done }
    }

    /// A copy of what was read so far.
    fn snapshot(&self) -> Vec<u8> {
        self.buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the pipe closes or `deadline`, then returns what was read.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A command running in the background with captured output.
pub struct Running {
    pub(super) cmd: String,
    pub(super) child: Option<Child>,
    pub(super) stdout: Option<Collector>,
    pub(super) stderr: Option<Collector>,
    pub(super) started: Instant,
    pub(super) timeout: Duration,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the command has written to stdout so far.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        self.stdout
            .as_ref()
            .map(Collector::snapshot)
            .unwrap_or_default()
    }

    /// Polls stdout until it contains `needle`, the command exits, or `within` passes;
    /// returns whether the needle appeared.
    pub fn wait_for_stdout(&mut self, needle: &[u8], within: Duration) -> bool {
        if needle.is_empty() {
            return true;
        }
        let start = Instant::now();
        loop {
            if self
                .stdout_so_far()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            if exited || start.elapsed() >= within {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for exit (until the command's deadline) and collects its output. On
    /// timeout the command's process group is killed.
    pub fn wait(mut self) -> Result<Output, CmdError> {
        let Some(mut child) = self.child.take() else {
            return Err(CmdError::Io {
                cmd: self.cmd.clone(),
                source: std::io::Error::other("already waited for"),
            });
        };
        let remaining = self.timeout.saturating_sub(self.started.elapsed());
        let waited = child.wait_timeout(remaining);
        let status = match waited {
            Ok(Some(status)) => Some(status),
            Ok(None) => None,
            Err(source) => {
                kill_group(&mut child);
                return Err(CmdError::Io {
                    cmd: self.cmd.clone(),
                    source,
                });
            }
        };
        let elapsed = self.started.elapsed();
        if status.is_none() {
            kill_group(&mut child);
        }
        let drain = Instant::now() + DRAIN_TIMEOUT;
        let stdout = self
            .stdout
            .take()
            .map(|c| c.finish(drain))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|c| c.finish(drain))
            .unwrap_or_default();
        match status {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
                elapsed,
            }),
            None => Err(CmdError::Timeout {
                cmd: self.cmd.clone(),
                after: self.timeout,
                stdout: tail(&stdout),
                stderr: tail(&stderr),
            }),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

/// Kills the child's process group (it is the group leader) and reaps the child.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}
