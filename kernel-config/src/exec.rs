//! Running the external tools of the kernel build (dpkg-query, tar, make) with a
//! deadline and an error that says what failed and where to look.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

/// How much of a failed command's log to quote in the error.
const LOG_TAIL_BYTES: u64 = 4096;

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error(
        "could not start `{what}`: {source} (is it installed? `cargo xtask deps` installs the build dependencies)"
    )]
    Spawn {
        /// The command line.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The program ran past its deadline and was killed.
    #[error("`{what}` did not finish within {after:?} and was killed{log}")]
    Timeout {
        /// The command line.
        what: String,
        /// The deadline.
        after: Duration,
        /// Hint pointing at the log, if any.
        log: String,
    },
    /// The program exited unsuccessfully.
    #[error("`{what}` failed ({status}){detail}")]
    Failed {
        /// The command line.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// Captured stderr or the end of the log.
        detail: String,
    },
    /// Waiting for the program or reading its output failed.
    #[error("running `{what}`: {source}")]
    Io {
        /// The command line.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Waits for `child` up to `timeout`; on timeout kills its whole process group (the
/// command was started as a group leader, so `make`'s compilers die with it).
fn wait_or_kill(
    child: &mut std::process::Child,
    what: &str,
    timeout: Duration,
    log: String,
) -> Result<ExitStatus, ExecError> {
    let io = |source| ExecError::Io {
        what: what.to_owned(),
        source,
    };
    match child.wait_timeout(timeout).map_err(io)? {
        Some(status) => Ok(status),
        None => {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            Err(ExecError::Timeout {
                what: what.to_owned(),
                after: timeout,
                log,
            })
        }
    }
}

/// Runs `cmd` with stdout and stderr appended to `log`; on failure the error quotes the
/// end of the log.
pub(crate) fn run_logged(
    cmd: &mut Command,
    timeout: Duration,
    log: &Path,
) -> Result<(), ExecError> {
    let what = describe(cmd);
    let io = |source| ExecError::Io {
        what: what.clone(),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let start = out.metadata().map_err(io)?.len();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            what: what.clone(),
            source,
        })?;
    let hint = format!(" (output in {})", log.display());
    let status = wait_or_kill(&mut child, &what, timeout, hint)?;
    if status.success() {
        return Ok(());
    }
    let tail = log_tail(log, start).unwrap_or_default();
    Err(ExecError::Failed {
        what,
        status,
        detail: format!("; end of {}:\n{tail}", log.display()),
    })
}

/// Runs `cmd` and returns its stdout; stderr is quoted in the error on failure.
pub(crate) fn run_captured(cmd: &mut Command, timeout: Duration) -> Result<String, ExecError> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            what: what.clone(),
            source,
        })?;
    let readers = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .map(|r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    });
    let status = wait_or_kill(&mut child, &what, timeout, String::new())?;
    let [stdout, stderr] = readers.map(|h| h.join().unwrap_or_default());
    if !status.success() {
        return Err(ExecError::Failed {
            what,
            status,
            detail: format!(": {}", String::from_utf8_lossy(&stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The last [`LOG_TAIL_BYTES`] written to `log` since offset `start`.
fn log_tail(log: &Path, start: u64) -> std::io::Result<String> {
    let mut f = File::open(log)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(LOG_TAIL_BYTES).max(start);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_and_failures() {
        let out = run_captured(
            Command::new("sh").args(["-c", "echo hi"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, "hi\n");
        let err = run_captured(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("boom") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }

    #[test]
    fn timeouts_kill_the_process_group() {
        let start = std::time::Instant::now();
        let err = run_captured(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        // The background sleep held stdout open; it must have been killed too.
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn logged_failures_quote_the_log() {
        let dir = std::env::temp_dir().join(format!("husk-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("build.log");
        let err = run_logged(
            Command::new("sh").args(["-c", "echo compiling; echo error: bad >&2; exit 2"]),
            Duration::from_secs(10),
            &log,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("error: bad") && msg.contains("compiling"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
