//! A private containerd per test: its own root, state, socket and config inside the
//! test directory, so tests never touch the machine's containerd or each other.
//!
//! The daemon runs with `PATH=<artifacts>:$PATH` (containerd resolves runtime
//! `io.containerd.husk.v2` to the binary `containerd-shim-husk-v2` on its `PATH`),
//! `HUSK_CONFIG` pointing at the husk config, and the test's `HUSK_TEST_DIR` marker.
//! It gets `PR_SET_PDEATHSIG` so it dies with a test process killed by a timeout.
//!
//! Two flavours ([`ContainerdFlavour`]): the machine's containerd (Debian 12: 1.6.20,
//! `containerd` and `ctr` from `PATH`), or containerd 2.x that `cargo xtask deps` fetches
//! from Debian sid into `<cache>/containerd2/` (see [`containerd2_dir`]). Their configs
//! differ only in the schema version and in which plugins make up CRI.

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

use crate::cmd::CmdError;
use crate::ctr::Ctr;
use crate::husk_config::CONFIG_ENV;
use crate::leaks::LeakScope;
use crate::procfs::read_process;
use crate::scope::{MARKER_ENV, TestScope};

mod binaries;

pub use binaries::*;

/// containerd 2.x's CRI: the gRPC service plus the plugins it was split into, and the
/// sandbox controllers that need them (disabling only some leaves the others failing to
/// load, with warnings). NRI is started by CRI; disabled too so no daemon of ours ever
/// touches the machine-wide `/var/run/nri/nri.sock`.
const CONTAINERD2_CRI_PLUGINS: [&str; 6] = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.runtime",
    "io.containerd.cri.v1.images",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.nri.v1.nri",
];

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
    #[error("starting {binary}: {source} (install it with `cargo xtask deps`)")]
    Spawn {
        /// The daemon binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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
    /// containerd 2.x was asked for but is not there.
    #[error(
        "containerd 2.x not found: {reason}. Run `cargo xtask deps` (it fetches containerd 2.x \
         from Debian sid into <husk cache>/{CONTAINERD2_CACHE_DIR}/; `cargo xtask test` passes \
         its directory as {CONTAINERD2_ENV}), or set {CONTAINERD2_ENV}=<directory with \
         `containerd` and `ctr`>"
    )]
    Containerd2Missing {
        /// What is missing.
        reason: String,
    },
    /// `containerd --version` failed.
    #[error("asking {binary} for its version: {source}")]
    Version {
        /// The binary.
        binary: PathBuf,
        /// What failed.
        source: Box<CmdError>,
    },
    /// `containerd --version` printed no version.
    #[error("`{binary} --version` printed no version: {output:?}")]
    VersionUnknown {
        /// The binary.
        binary: PathBuf,
        /// What it printed.
        output: String,
    },
    /// The binary is not the containerd release the flavour stands for.
    #[error(
        "{binary} is containerd {version}, but the {flavour} flavour needs {want}; \
         run `cargo xtask deps` to fetch containerd 2.x"
    )]
    WrongVersion {
        /// The binary.
        binary: PathBuf,
        /// What it reported.
        version: String,
        /// The flavour.
        flavour: ContainerdFlavour,
        /// What was wanted.
        want: &'static str,
    },
}

/// How to start containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Which containerd (default: the system's).
    pub flavour: ContainerdFlavour,
    /// Prepended to `PATH` (where `containerd-shim-husk-v2` is).
    pub shim_dir: Option<PathBuf>,
    /// Exported as `HUSK_CONFIG`.
    pub husk_config: Option<PathBuf>,
    /// Keep the CRI plugin (off by default: ctr tests do not need it).
    pub cri: bool,
    /// Appended verbatim to the generated config (e.g. CRI settings), in the flavour's
    /// config schema: `version = 2` for the system containerd, `version = 3` for 2.x.
    pub extra_config: String,
}

/// A running private containerd; stopped on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    /// How to start it (again, for [`Containerd::restart`]).
    command: Vec<(String, PathBuf)>,
    env: Vec<(&'static str, std::ffi::OsString)>,
    address: PathBuf,
    log: PathBuf,
    flavour: ContainerdFlavour,
    binaries: ContainerdBinaries,
    version: String,
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
    // 2.x migrates `version = 2` configs (with a warning) but speaks 3 natively; the keys
    // written here mean the same in both.
    let (version, cri_plugins): (u32, &[&str]) = match opts.flavour {
        ContainerdFlavour::System => (2, &["io.containerd.grpc.v1.cri"]),
        ContainerdFlavour::V2 | ContainerdFlavour::V2SandboxApi => (3, &CONTAINERD2_CRI_PLUGINS),
    };
    let mut c = format!(
        "version = {version}\nroot = {}\nstate = {}\n",
        q(root),
        q(state)
    );
    if !opts.cri {
        let list: Vec<String> = cri_plugins
            .iter()
            .map(|p| toml::Value::String((*p).to_owned()).to_string())
            .collect();
        c.push_str(&format!("disabled_plugins = [{}]\n", list.join(", ")));
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
        let binaries = opts.flavour.binaries()?;
        let version = binary_version(&binaries.containerd)?;
        if let Err(want) = opts.flavour.accepts(&version) {
            return Err(ContainerdError::WrongVersion {
                binary: binaries.containerd,
                version,
                flavour: opts.flavour,
                want,
            });
        }
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
        File::create(&log).map_err(setup_err(&log))?;

        let command = vec![
            ("--root".to_owned(), root),
            ("--state".to_owned(), state),
            ("--address".to_owned(), address.clone()),
            ("--config".to_owned(), config),
        ];
        let mut env = vec![(MARKER_ENV, dir.as_os_str().to_owned())];
        if let Some(shim_dir) = &opts.shim_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![shim_dir.clone()];
            paths.extend(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(paths) {
                env.push(("PATH", joined));
            }
        }
        if let Some(cfg) = &opts.husk_config {
            env.push((CONFIG_ENV, cfg.as_os_str().to_owned()));
        }
        let mut me = Self {
            child: None,
            command,
            env,
            address,
            log,
            flavour: opts.flavour,
            binaries,
            version,
        };
        me.spawn()?;
        Ok(me)
    }

    /// Starts the daemon (its output appended to the log) and waits until it serves.
    fn spawn(&mut self) -> Result<(), ContainerdError> {
        let out = File::options()
            .append(true)
            .open(&self.log)
            .map_err(setup_err(&self.log))?;
        let err = out.try_clone().map_err(setup_err(&self.log))?;
        let mut cmd = Command::new(&self.binaries.containerd);
        for (flag, value) in &self.command {
            cmd.arg(flag).arg(value);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
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
        let child = cmd.spawn().map_err(|source| ContainerdError::Spawn {
            binary: self.binaries.containerd.clone(),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops the daemon as a node's service manager restarts it (SIGTERM; the shims and
    /// their containers keep running) and starts it again on the same state.
    /// It stays down for `down_for`.
    pub fn restart(&mut self, down_for: Duration) -> Result<(), ContainerdError> {
        self.stop()?;
        thread::sleep(down_for);
        self.spawn()
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

    /// Which containerd this is.
    pub fn flavour(&self) -> ContainerdFlavour {
        self.flavour
    }

    /// The daemon binary and its matching `ctr`.
    pub fn binaries(&self) -> &ContainerdBinaries {
        &self.binaries
    }

    /// The version the daemon binary reported (e.g. `1.6.20~ds1`, `2.1.9+unknown`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// A leak scope for what the test `tag` starts through this containerd in `namespace`:
    /// processes younger than the daemon, the daemon itself excluded.
    pub fn leak_scope(&self, tag: &str, namespace: &str) -> LeakScope {
        let since = self
            .pid()
            .and_then(read_process)
            .map_or(0, |p| p.start_ticks);
        let mut leaks = LeakScope::new(tag, namespace, &self.address, since);
        if let Some(pid) = self.pid() {
            leaks.exclude_pid(pid);
        }
        leaks
    }

    /// This containerd's own `ctr` on its socket, in `namespace`.
    pub fn ctr(&self, namespace: &str, timeout: Duration) -> Ctr {
        Ctr::new(&self.address, namespace, timeout).with_program(&self.binaries.ctr)
    }

    /// Prints the end of the log to stderr (nextest shows a failed test's stderr).
    pub fn print_log_tail(&self, why: &str) {
        eprintln!(
            "husk-tests: {why}; containerd log {} (end):\n{}",
            self.log.display(),
            self.log_tail()
        );
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
        assert!(c.starts_with("version = 2\n"), "{c}");
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

    #[test]
    fn containerd2_config_is_version_3_without_cri() {
        let opts = ContainerdOptions {
            flavour: ContainerdFlavour::V2,
            ..Default::default()
        };
        let c = config_text(
            Path::new("/r"),
            Path::new("/s"),
            Path::new("/d/cd.sock"),
            Path::new("/d"),
            &opts,
        );
        let parsed: toml::Table = c.parse().unwrap();
        assert_eq!(parsed["version"].as_integer(), Some(3));
        let disabled: Vec<&str> = parsed["disabled_plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(disabled, CONTAINERD2_CRI_PLUGINS);
        assert_eq!(parsed["grpc"]["address"].as_str(), Some("/d/cd.sock"));
        assert_eq!(
            parsed["plugins"]["io.containerd.internal.v1.opt"]["path"].as_str(),
            Some("/d/opt")
        );
    }

    #[test]
    fn shim_sockets_are_named_alike_under_containerd_2() {
        // Observed with containerd 2.1.9: the shim of ns husk-test, id u2, address
        // /tmp/c2exp/t1/cd.sock listened on this socket (the leak checker relies on it).
        assert_eq!(
            crate::leaks::shim_socket_path(Path::new("/tmp/c2exp/t1/cd.sock"), "husk-test", "u2"),
            Path::new(
                "/run/containerd/s/115a48964980d6199ba40471a0990d72218c01514fe1b5e6918b401941070db4"
            )
        );
    }
}
