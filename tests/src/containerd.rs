//! A private containerd per test: its own root, state, socket and config inside the
//! test directory, so tests never touch the machine's containerd or each other.
//!
//! The daemon runs with `PATH=<artifacts>:$PATH` (containerd resolves runtime
//! `io.containerd.husk.v2` to the binary `containerd-shim-husk-v2` on its `PATH`),
//! `HUSK_CONFIG` pointing at the husk config, and the test's `HUSK_TEST_DIR` marker.
//! It gets `PR_SET_PDEATHSIG` so it dies with a test process killed by a timeout.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

use crate::husk_config::CONFIG_ENV;
use crate::scope::{MARKER_ENV, TestScope};

/// containerd normally answers within a second; a loaded CI machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket poll interval while starting.
const POLL: Duration = Duration::from_millis(20);
/// How much of the log errors quote.
const LOG_TAIL: u64 = 4000;

/// Errors starting or stopping containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// Preparing its directories or config failed.
    #[error("preparing containerd in {path}: {source}")]
    Setup {
        /// What was being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("starting containerd: {0} (install it with `cargo xtask deps`)")]
    Spawn(std::io::Error),
    /// It exited during start-up.
    #[error("containerd exited during start-up ({status}); end of {log}:\n{tail}")]
    Exited {
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// Its socket did not accept connections in time.
    #[error("containerd did not listen on {address} within {after:?}; end of {log}:\n{tail}")]
    NotReady {
        /// The socket.
        address: PathBuf,
        /// The deadline.
        after: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// Waiting for it failed.
    #[error("waiting for containerd: {0}")]
    Wait(std::io::Error),
}

/// How to start containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Prepended to `PATH` (where `containerd-shim-husk-v2` is).
    pub shim_dir: Option<PathBuf>,
    /// Exported as `HUSK_CONFIG`.
    pub husk_config: Option<PathBuf>,
    /// Keep the CRI plugin (off by default: ctr tests do not need it).
    pub cri: bool,
    /// Appended verbatim to the generated config (e.g. CRI settings).
    pub extra_config: String,
}

/// A running private containerd; stopped on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    address: PathBuf,
    log: PathBuf,
}

fn setup_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerdError + '_ {
    move |source| ContainerdError::Setup {
        path: path.to_owned(),
        source,
    }
}

fn config_text(
    root: &Path,
    state: &Path,
    address: &Path,
    dir: &Path,
    opts: &ContainerdOptions,
) -> String {
    let q = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned()).to_string();
    let mut c = format!("version = 2\nroot = {}\nstate = {}\n", q(root), q(state));
    if !opts.cri {
        c.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
    }
    c.push_str(&format!("\n[grpc]\n  address = {}\n", q(address)));
    // Keep the "opt" plugin out of the machine-wide /opt/containerd.
    c.push_str(&format!(
        "\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
        q(&dir.join("opt"))
    ));
    c.push_str(&opts.extra_config);
    c
}

impl Containerd {
    /// Starts containerd in `scope`'s directory and waits until its socket answers.
    pub fn start(scope: &TestScope, opts: &ContainerdOptions) -> Result<Self, ContainerdError> {
        let dir = scope.dir();
        let root = dir.join("root");
        let state = dir.join("state");
        let address = dir.join("cd.sock");
        let config = dir.join("containerd.toml");
        let log = dir.join("containerd.log");
        for d in [&root, &state] {
            fs::create_dir_all(d).map_err(setup_err(d))?;
        }
        fs::write(&config, config_text(&root, &state, &address, dir, opts))
            .map_err(setup_err(&config))?;
        let out = File::create(&log).map_err(setup_err(&log))?;
        let err = out.try_clone().map_err(setup_err(&log))?;

        let mut cmd = Command::new("containerd");
        cmd.arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&address)
            .arg("--config")
            .arg(&config)
            .env(MARKER_ENV, dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(shim_dir) = &opts.shim_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![shim_dir.clone()];
            paths.extend(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PATH", joined);
            }
        }
        if let Some(cfg) = &opts.husk_config {
            cmd.env(CONFIG_ENV, cfg);
        }
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().map_err(ContainerdError::Spawn)?;
        let mut me = Self {
            child: Some(child),
            address,
            log,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<(), ContainerdError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().map_err(ContainerdError::Wait)? {
                    self.child = None;
                    return Err(ContainerdError::Exited {
                        status,
                        log: self.log.clone(),
                        tail: self.log_tail(),
                    });
                }
            }
            if UnixStream::connect(&self.address).is_ok() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(ContainerdError::NotReady {
                    address: self.address.clone(),
                    after: START_TIMEOUT,
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The gRPC socket (`ctr -a`).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Its log file (containerd's and the shims' messages).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last few KB of the log.
    pub fn log_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = File::open(&self.log)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. Shims are not containerd's
    /// children in the process sense of lifetime: they outlive it by design, which is
    /// why leaks are checked separately.
    pub fn stop(&mut self) -> Result<(), ContainerdError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match child
            .wait_timeout(STOP_TIMEOUT)
            .map_err(ContainerdError::Wait)?
        {
            Some(_) => Ok(()),
            None => {
                let _ = child.kill();
                child.wait().map(|_| ()).map_err(ContainerdError::Wait)
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("husk-tests: stopping containerd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disables_cri_and_quotes_paths() {
        let c = config_text(
            Path::new("/r"),
            Path::new("/s"),
            Path::new("/d/cd.sock"),
            Path::new("/d"),
            &ContainerdOptions::default(),
        );
        assert!(c.contains("root = \"/r\""));
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(c.contains("address = \"/d/cd.sock\""));
        assert!(c.contains("path = \"/d/opt\""));
        let with_cri = config_text(
            Path::new("/r"),
            Path::new("/s"),
            Path::new("/a"),
            Path::new("/d"),
            &ContainerdOptions {
                cri: true,
                ..Default::default()
            },
        );
        assert!(!with_cri.contains("disabled_plugins"));
    }
}
