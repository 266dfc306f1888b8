//! Running external commands with a deadline, captured output and errors that name the
//! command, how it ended and the end of what it printed.
//!
//! Captured commands run in their own process group so a timeout kills everything they
//! started (ctr, make, umoci children). Commands with inherited stdio (cargo, apt-get)
//! stay in the caller's group so Ctrl-C still reaches them.

mod running;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

pub use running::Running;
use running::{Collector, PtyReader};

/// Default deadline for a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much output an error message quotes.
const TAIL_CHARS: usize = 3000;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started.
    #[error(
        "could not start `{cmd}`: {source} (is it installed? `cargo xtask deps` installs what husk needs)"
    )]
    Spawn {
        /// The command line.
        cmd: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The deadline passed; the command was killed.
    #[error(
        "`{cmd}` did not finish within {after:?} and was killed{}",
        quote(stdout, stderr)
    )]
    Timeout {
        /// The command line.
        cmd: String,
        /// The deadline.
        after: Duration,
        /// End of its stdout.
        stdout: String,
        /// End of its stderr.
        stderr: String,
    },
    /// It exited unsuccessfully.
    #[error("`{cmd}` failed ({status}){}", quote(stdout, stderr))]
    Failed {
        /// The command line.
        cmd: String,
        /// How it ended.
        status: ExitStatus,
        /// End of its stdout.
        stdout: String,
        /// End of its stderr.
        stderr: String,
    },
    /// Waiting for it or talking to it failed.
    #[error("running `{cmd}`: {source}")]
    Io {
        /// The command line.
        cmd: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn quote(stdout: &str, stderr: &str) -> String {
    let mut s = String::new();
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if !text.trim().is_empty() {
            s.push_str(&format!("\n--- {name} (end) ---\n{}", text.trim_end()));
        }
    }
    s
}

pub(super) fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let skip = text.chars().count().saturating_sub(TAIL_CHARS);
    text.chars().skip(skip).collect()
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (or to the terminal, for [`Cmd::output_in_pty`]).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Output {
    /// The exit code, or `128 + signal` if it was killed (what a shell reports).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }

    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[derive(Debug, Clone)]
enum Input {
    Null,
    Inherit,
    Bytes(Arc<Vec<u8>>),
}

/// A command to run: program, arguments, environment, stdin and a deadline.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    input: Input,
    timeout: Duration,
}

impl Cmd {
    /// `program` with no arguments, stdin from `/dev/null`, a 60 s deadline.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            input: Input::Null,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the command.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable for the command.
    #[must_use]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Runs the command in `dir`.
    #[must_use]
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Feeds `data` to stdin, then closes it.
    #[must_use]
    pub fn stdin_bytes(mut self, data: Vec<u8>) -> Self {
        self.input = Input::Bytes(Arc::new(data));
        self
    }

    /// Lets the command read the caller's stdin.
    #[must_use]
    pub fn stdin_inherit(mut self) -> Self {
        self.input = Input::Inherit;
        self
    }

    /// Sets the deadline.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c
    }

    fn spawn_err(&self, source: std::io::Error) -> CmdError {
        CmdError::Spawn {
            cmd: self.to_string(),
            source,
        }
    }

    /// Runs to completion with captured output; any exit status is returned as `Ok`.
    pub fn output(&self) -> Result<Output, CmdError> {
        self.spawn()?.wait()
    }

    /// Like [`Cmd::output`] but an unsuccessful exit is an error.
    pub fn checked(&self) -> Result<Output, CmdError> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(CmdError::Failed {
                cmd: self.to_string(),
                status: out.status,
                stdout: tail(&out.stdout),
                stderr: tail(&out.stderr),
            })
        }
    }

    /// Runs with stdout/stderr shown to the user (for long builds); unsuccessful exit
    /// is an error. The command stays in the caller's process group.
    pub fn run_inherit(&self) -> Result<(), CmdError> {
        let mut c = self.command();
        match &self.input {
            Input::Inherit => c.stdin(Stdio::inherit()),
            _ => c.stdin(Stdio::null()),
        };
        let mut child = c.spawn().map_err(|e| self.spawn_err(e))?;
        let status = match child.wait_timeout(self.timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout {
                    cmd: self.to_string(),
                    after: self.timeout,
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
            Err(source) => {
                return Err(CmdError::Io {
                    cmd: self.to_string(),
                    source,
                });
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(CmdError::Failed {
                cmd: self.to_string(),
                status,
                stdout: String::new(),
                stderr: String::new(),
            })
        }
    }

    /// Starts the command in the background with captured output; [`Running::wait`]
    /// collects it. The deadline counts from now.
    pub fn spawn(&self) -> Result<Running, CmdError> {
        let mut c = self.command();
        c.stdin(match self.input {
            Input::Null => Stdio::null(),
            Input::Inherit => Stdio::inherit(),
            Input::Bytes(_) => Stdio::piped(),
        });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.process_group(0);
        let started = Instant::now();
        let mut child = c.spawn().map_err(|e| self.spawn_err(e))?;
        if let (Input::Bytes(data), Some(mut stdin)) = (&self.input, child.stdin.take()) {
            let data = Arc::clone(data);
            // EPIPE (the command exited without reading everything) is not our error.
            thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let stdout = child.stdout.take().map(|s| Collector::start(Box::new(s)));
        let stderr = child.stderr.take().map(|s| Collector::start(Box::new(s)));
        Ok(Running {
            cmd: self.to_string(),
            child: Some(child),
            stdout,
            stderr,
            started,
            timeout: self.timeout,
        })
    }

    /// Runs with stdin, stdout and stderr all connected to a new pseudo-terminal (what
    /// `ctr run -t` needs) and returns everything written to it as `stdout`.
    pub fn output_in_pty(&self) -> Result<Output, CmdError> {
        let io = |source: std::io::Error| CmdError::Io {
            cmd: self.to_string(),
            source,
        };
        let pty = nix::pty::openpty(None, None).map_err(|e| io(e.into()))?;
        let slave = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(io);
        let mut c = self.command();
        c.stdin(slave(&pty.slave)?)
            .stdout(slave(&pty.slave)?)
            .stderr(slave(&pty.slave)?)
            .process_group(0);
        let started = Instant::now();
        let child = c.spawn().map_err(|e| self.spawn_err(e))?;
        // Only the child may hold the slave, or the master never sees EOF/EIO.
        drop(c);
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let stdout = Collector::start(Box::new(PtyReader(master)));
        Running {
            cmd: self.to_string(),
            child: Some(child),
            stdout: Some(stdout),
            stderr: None,
            started,
            timeout: self.timeout,
        }
        .wait()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |s: &OsStr| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        write!(f, "{}", word(&self.program))?;
        for a in &self.args {
            write!(f, " {}", word(a))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_stderr_and_exit_code() {
        let out = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 7"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.code(), 7);
    }

    #[test]
    fn signals_map_to_shell_codes() {
        let out = Cmd::new("sh").args(["-c", "kill -9 $$"]).output().unwrap();
        assert_eq!(out.code(), 137);
    }

    #[test]
    fn stdin_is_fed_and_closed() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let out = Cmd::new("cat").stdin_bytes(data.clone()).checked().unwrap();
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn failures_and_timeouts_name_the_command() {
        let err = Cmd::new("sh")
            .args(["-c", "echo nope >&2; exit 1"])
            .checked()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sh -c 'echo nope >&2; exit 1'` failed"),
            "{err}"
        );
        assert!(err.contains("nope"), "{err}");

        let start = Instant::now();
        let err = Cmd::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .timeout(Duration::from_millis(300))
            .output()
            .unwrap_err();
        assert!(matches!(err, CmdError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));

        let err = Cmd::new("/nonexistent/prog").output().unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
    }

    #[test]
    fn background_output_can_be_watched() {
        let mut r = Cmd::new("sh")
            .args(["-c", "echo ready; sleep 0.3; echo done"])
            .spawn()
            .unwrap();
        assert!(r.wait_for_stdout(b"ready", Duration::from_secs(5)));
        let out = r.wait().unwrap();
        assert_eq!(out.stdout, b"ready\ndone\n");
        let mut r = Cmd::new("true").spawn().unwrap();
        assert!(!r.wait_for_stdout(b"never", Duration::from_secs(5)));
    }

    #[test]
    fn pty_gives_a_terminal() {
        let out = Cmd::new("sh")
            .args(["-c", "test -t 0 && test -t 1 && echo is-a-tty"])
            .output_in_pty()
            .unwrap();
        assert!(out.stdout_text().contains("is-a-tty"), "{out:?}");
        assert!(out.status.success());
    }
}
