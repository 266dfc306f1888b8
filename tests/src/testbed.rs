//! One integration test's world: a private containerd, the busybox image imported into
//! namespace `husk-test`, a ctr bound to them, and the leak checker.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use husk_tests::{Runtime, TestBed};
//! let bed = TestBed::start("exit-code", Runtime::Runc)?;
//! let id = bed.id("t");
//! let out = bed.run(&id, &[], &["sh", "-c", "exit 7"]).output()?;
//! assert_eq!(out.code(), 7);
//! bed.finish()?; // fails if anything of the test is left behind
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::artifacts::{Artifacts, ArtifactsError, HUSK_RUNTIME, RUNC_RUNTIME};
use crate::cmd::{Cmd, CmdError};
use crate::containerd::{Containerd, ContainerdError, ContainerdFlavour, ContainerdOptions};
use crate::ctr::{Ctr, CtrError};
use crate::husk_config::{ConfigError, HuskConfig};
use crate::image::{BusyboxImage, ImageError};
use crate::leaks::{LeakError, LeakReport, LeakScope};
use crate::scope::{ScopeError, TestScope};

/// The containerd namespace ctr tests use (CRI uses `k8s.io`).
pub const TEST_NAMESPACE: &str = "husk-test";
/// After the test body, how long shims and VMs get to go away.
const LEAK_GRACE: Duration = Duration::from_secs(3);

/// Errors setting up or finishing a test bed.
#[derive(Debug, thiserror::Error)]
pub enum TestBedError {
    /// The test directory.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The husk artifacts.
    #[error(transparent)]
    Artifacts(#[from] ArtifactsError),
    /// The husk config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// containerd.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The test image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// ctr.
    #[error(transparent)]
    Ctr(#[from] CtrError),
    /// The cache directory.
    #[error(transparent)]
    Cache(#[from] husk_kernel_config::CacheError),
    /// The test left something behind.
    #[error("{source}\ncontainerd log ({log}), end:\n{log_tail}")]
    Leaked {
        /// What leaked.
        source: Box<LeakError>,
        /// containerd's log.
        log: PathBuf,
        /// Its end.
        log_tail: String,
    },
}

/// The runtime a test runs containers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `io.containerd.runc.v2`: proves the harness itself.
    Runc,
    /// `io.containerd.husk.v2`: the system under test.
    Husk,
}

impl Runtime {
    /// The containerd runtime type.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::Runc => RUNC_RUNTIME,
            Runtime::Husk => HUSK_RUNTIME,
        }
    }

    /// Default deadline of one ctr command (VMs boot under TCG here).
    pub fn ctr_timeout(self) -> Duration {
        match self {
            Runtime::Runc => Duration::from_secs(60),
            Runtime::Husk => Duration::from_secs(120),
        }
    }
}

/// Options for [`TestBed`].
#[derive(Debug, Clone)]
pub struct TestBedBuilder {
    name: String,
    runtime: Runtime,
    husk_config: Option<HuskConfig>,
    flavour: ContainerdFlavour,
}

impl TestBedBuilder {
    /// Runs this containerd (default: the system's, 1.6 on Debian 12) and its own `ctr`.
    #[must_use]
    pub fn containerd(mut self, flavour: ContainerdFlavour) -> Self {
        self.flavour = flavour;
        self
    }

    /// Runs the shim with this config instead of `<artifacts>/config.toml`.
    #[must_use]
    pub fn husk_config(mut self, config: HuskConfig) -> Self {
        self.husk_config = Some(config);
        self
    }

    /// Creates the test directory, starts containerd and imports the image.
    pub fn start(self) -> Result<TestBed, TestBedError> {
        let scope = TestScope::new(&self.name)?;
        let mut opts = ContainerdOptions {
            flavour: self.flavour,
            ..ContainerdOptions::default()
        };
        if self.runtime == Runtime::Husk || self.husk_config.is_some() {
            let artifacts = Artifacts::from_env()?;
            opts.shim_dir = Some(artifacts.dir().to_owned());
            opts.husk_config = Some(match &self.husk_config {
                Some(cfg) => {
                    let path = scope.dir().join("husk-config.toml");
                    cfg.write(&path, &format!("husk test config for {}", self.name))?;
                    path
                }
                None => artifacts.config(),
            });
        }
        let image = BusyboxImage::ensure(&husk_kernel_config::cache_root()?)?;
        let containerd = Containerd::start(&scope, &opts)?;
        eprintln!(
            "husk-tests: {} {} ({})",
            containerd.flavour(),
            containerd.version(),
            containerd.binaries().containerd.display()
        );
        let leaks = containerd.leak_scope(scope.tag(), TEST_NAMESPACE);
        let ctr = containerd.ctr(TEST_NAMESPACE, self.runtime.ctr_timeout());
        ctr.import(&image.archive, &image.reference)?;
        Ok(TestBed {
            containerd,
            ctr,
            image,
            leaks,
            ids: Mutex::new(Vec::new()),
            runtime: self.runtime,
            finished: false,
            scope,
        })
    }
}

/// A running test world; call [`TestBed::finish`] at the end of a passing test.
#[derive(Debug)]
pub struct TestBed {
    // Field order is drop order: containerd stops before the directory is removed.
    containerd: Containerd,
    ctr: Ctr,
    image: BusyboxImage,
    leaks: LeakScope,
    ids: Mutex<Vec<String>>,
    runtime: Runtime,
    finished: bool,
    scope: TestScope,
}

impl TestBed {
    /// A test bed with default options.
    pub fn start(name: &str, runtime: Runtime) -> Result<Self, TestBedError> {
        Self::builder(name, runtime).start()
    }

    /// Options first.
    pub fn builder(name: &str, runtime: Runtime) -> TestBedBuilder {
        TestBedBuilder {
            name: name.to_owned(),
            runtime,
            husk_config: None,
            flavour: ContainerdFlavour::default(),
        }
    }

    /// ctr for this test's containerd and namespace.
    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// The image reference to run.
    pub fn image(&self) -> &str {
        &self.image.reference
    }

    /// The cached, unpacked image rootfs (for hand-made bundles; do not modify).
    pub fn image_rootfs(&self) -> &Path {
        &self.image.rootfs
    }

    /// The runtime type (`io.containerd.husk.v2` or `io.containerd.runc.v2`).
    pub fn runtime_type(&self) -> &'static str {
        self.runtime.runtime_type()
    }

    /// The test's private directory (for specs, configs, scratch files).
    pub fn dir(&self) -> &Path {
        self.scope.dir()
    }

    /// The private containerd.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// A container id unique to this test, registered for the leak check.
    pub fn id(&self, short: &str) -> String {
        let id = self.scope.id(short);
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id.clone());
        id
    }

    /// `ctr run --rm --runtime <runtime> <flags...> <image> <id> <args...>`.
    pub fn run(&self, id: &str, flags: &[&str], args: &[&str]) -> Cmd {
        self.ctr
            .cmd(["run", "--rm", "--runtime", self.runtime_type()])
            .args(flags)
            .arg(self.image())
            .arg(id)
            .args(args)
    }

    /// `ctr run -d --runtime <runtime> <image> <id> <args...>`: a container left running.
    pub fn run_detached(&self, id: &str, args: &[&str]) -> Result<(), CmdError> {
        self.ctr
            .cmd(["run", "-d", "--runtime", self.runtime_type()])
            .arg(self.image())
            .arg(id)
            .args(args)
            .checked()?;
        Ok(())
    }

    /// Ends a container left running by [`TestBed::run_detached`]: SIGKILL, wait until it
    /// is stopped, delete the task and the container.
    pub fn stop_detached(&self, id: &str) -> Result<(), TestBedError> {
        let ctr = |args: &[&str]| self.ctr.checked(args).map(drop).map_err(CtrError::from);
        ctr(&["task", "kill", "-s", "SIGKILL", id])?;
        self.ctr
            .wait_task_status(id, "STOPPED", Duration::from_secs(30))?;
        ctr(&["task", "delete", id])?;
        ctr(&["container", "delete", id])?;
        Ok(())
    }

    /// One leak check now, without waiting or failing (to inspect what the test owns).
    pub fn check_leaks_now(&self) -> Result<LeakReport, TestBedError> {
        let ids = self
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.leaks
            .check(&ids)
            .map_err(|source| TestBedError::Leaked {
                source: Box::new(source),
                log: self.containerd.log().to_owned(),
                log_tail: String::new(),
            })
    }

    /// Checks for leaks (with a grace period), stops containerd and removes the test
    /// directory. Returns the report (it may carry warnings).
    pub fn finish(mut self) -> Result<LeakReport, TestBedError> {
        self.finished = true;
        let ids = self
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let checked = self.leaks.wait_clean(&ids, LEAK_GRACE);
        if let Err(source) = checked {
            self.leaks.kill_attributed();
            return Err(TestBedError::Leaked {
                source: Box::new(source),
                log: self.containerd.log().to_owned(),
                log_tail: self.containerd.log_tail(),
            });
        }
        self.containerd.stop()?;
        // With containerd gone nothing of the test may remain at all.
        let report = self
            .leaks
            .wait_clean(&ids, Duration::from_secs(5))
            .map_err(|source| TestBedError::Leaked {
                source: Box::new(source),
                log: self.containerd.log().to_owned(),
                log_tail: self.containerd.log_tail(),
            });
        self.leaks.kill_attributed();
        let report = report?;
        if !report.suspects.is_empty() {
            eprintln!("husk-tests: warnings after the test:\n{report}");
        }
        self.scope.cleanup()?;
        Ok(report)
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped without `finish`: the test failed. Show what containerd and the shims
        // said (nextest prints a failed test's stderr).
        self.containerd.print_log_tail("the test did not finish");
        self.leaks.kill_and_report();
    }
}
