//! The nested-KVM test host: run a command on a machine that has a working `/dev/kvm`.
//!
//! The build machines have no usable hardware virtualization (`/dev/kvm` is `kvm_pvm`), so
//! a KVM-based monitor (`husk-vmm`, QEMU `-accel kvm`) cannot be tested on them directly.
//! QEMU's TCG with `-cpu max` emulates AMD SVM, though, and a kernel with `CONFIG_KVM_AMD`
//! running there offers a real `/dev/kvm` (see `platform.md`, "Nested KVM inside TCG").
//! [`NestedHost::run`] boots such a VM — the *outer* kernel (`kernel-config/outer/`,
//! copied to `$HUSK_ARTIFACTS/outer-vmlinuz` by `cargo xtask build`) with a small
//! initramfs written here — and runs one shell script in it:
//!
//! - the build machine's root is shared read-only over 9p and becomes the script's root
//!   (`chroot`), so the script runs the machine's own binaries (QEMU, the cargo target
//!   directory, the husk artifacts) at their usual paths;
//! - `/proc`, `/sys`, `/sys/fs/cgroup`, `/dev` (devtmpfs, with `/dev/kvm`), `/dev/pts` and
//!   `/dev/shm` are the VM's own; `/tmp`, `/run` and `/var/tmp` (plus
//!   [`NestedHost::writable`] paths) are empty tmpfs mounts, except that the artifacts and
//!   the cargo target directory stay visible if they live there (a checkout in `/tmp`);
//! - the test's scratch directory is shared read-write at the same path, and is the
//!   script's working directory (`$HUSK_NESTED_SCRATCH`): files put there before the run
//!   are visible inside, files written inside are visible afterwards;
//! - the script's stdout, stderr and exit status go to files in the scratch directory
//!   (9p writes reach the host file before the VM powers off), the serial console carries
//!   the outer kernel's and the init's messages for diagnosis.
//!
//! Each run is one boot, bounded twice: the script by `timeout` inside the VM (it then
//! exits 124 and the VM still reports), QEMU by a host deadline (boot allowance on top)
//! after which it is killed. QEMU runs in its own process group, killed if the caller
//! drops the run early, and its command line names the scratch directory, so the leak
//! checker attributes it to the test.
//!
//! On a host whose own KVM runs standard guests there is nothing to nest: the script runs
//! directly, in a private mount namespace with the same environment, working directory,
//! tmpfs mounts and timeout (`direct`). [`HOST_MODE_ENV`] overrides the choice.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use husk_rootfs::Entry;

use crate::artifacts::Artifacts;
use crate::cmd::{Cmd, CmdError};

pub mod compare;
mod direct;
mod init;
pub mod network;
pub mod smaps;

/// `outer` or `direct` forces how scripts run; unset, `direct` where this host's KVM runs
/// standard guests.
pub const HOST_MODE_ENV: &str = "HUSK_NESTED_HOST";

/// Exported to every script: `outer` or `direct`, how it runs.
pub const MODE_VAR: &str = "HUSK_NESTED_MODE";

/// File name of the outer kernel in the artifacts directory.
pub const OUTER_KERNEL: &str = "outer-vmlinuz";
/// The built-in monitor's binary (the `husk-vmm` crate), collected into the artifacts
/// directory by `cargo xtask build`.
pub use husk_hypervisor::builtin::VMM_BINARY;
/// Guest RAM of the outer VM: room for a couple of 256 MiB inner VMs and their monitors.
pub const DEFAULT_MEMORY_MIB: u32 = 1536;
/// vCPUs of the outer VM (each one a host thread under multi-threaded TCG).
pub const DEFAULT_CPUS: u32 = 2;
/// Time the outer VM gets to boot and to power off, on top of the script's own timeout.
/// A boot takes a few seconds; the allowance covers a loaded 2-core machine.
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(90);
/// The host's TSC frequency, if `/proc/cpuinfo` does not say (the outer kernel must not
/// calibrate its TSC under TCG: that can hang).
const FALLBACK_TSC_KHZ: u64 = 2_400_000;
/// `timeout`'s exit status when the script ran out of time.
pub const SCRIPT_TIMED_OUT: i32 = 124;

/// Errors running a command on the nested host.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// [`HOST_MODE_ENV`] has a value other than `outer` or `direct`.
    #[error("{HOST_MODE_ENV}={0:?}: expected \"outer\" or \"direct\"")]
    BadMode(String),
    /// Running the script directly on this host failed or outlived its deadline.
    #[error("running the script directly on this KVM host: {0}")]
    Direct(CmdError),
    /// The outer kernel has not been built.
    #[error(
        "the nested test host's kernel {0} is missing: run `cargo xtask build` (it builds the \
         outer kernel from kernel-config/outer/)"
    )]
    NoOuterKernel(PathBuf),
    /// Preparing the scratch directory or the initramfs failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The initramfs could not be written.
    #[error("writing the nested host's initramfs: {0}")]
    Initramfs(#[from] husk_rootfs::InitramfsError),
    /// QEMU could not be started, failed, or outlived its deadline.
    #[error(
        "the nested host (outer QEMU) failed: {source}{}",
        quote_console(console)
    )]
    Qemu {
        /// What went wrong.
        source: CmdError,
        /// The end of the outer VM's serial console.
        console: String,
    },
    /// The VM ended without reporting the script's exit status.
    #[error(
        "the nested host powered off without reporting the command's exit status \
         (QEMU {qemu_status}, after {elapsed:?}){reason}{}",
        quote_console(console)
    )]
    NoStatus {
        /// How QEMU ended.
        qemu_status: String,
        /// QEMU's run time.
        elapsed: Duration,
        /// What the init reported, if anything.
        reason: String,
        /// The end of the outer VM's serial console.
        console: String,
    },
}

fn quote_console(console: &str) -> String {
    if console.trim().is_empty() {
        String::new()
    } else {
        format!(
            "\n--- nested host console (end) ---\n{}",
            crate::cmd::tail(console.as_bytes()).trim_end()
        )
    }
}

/// What a command on the nested host produced.
#[derive(Debug, Clone)]
pub struct NestedOutput {
    /// The script's exit status ([`SCRIPT_TIMED_OUT`] if it ran out of time).
    pub code: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// The outer VM's serial console (kernel messages and the init's progress lines).
    pub console: String,
    /// Wall time of the outer QEMU, boot to power-off.
    pub elapsed: Duration,
    /// The outer VM's uptime when the script started (its boot time, as it saw it).
    pub boot: Option<Duration>,
}

impl NestedOutput {
    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit status {} after {:?} (outer boot {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}{}",
            self.code,
            self.elapsed,
            self.boot,
            self.stdout_text().trim_end(),
            self.stderr_text().trim_end(),
            quote_console(&self.console)
        )
    }
}

/// A nested test host configuration; every [`NestedHost::run`] boots a fresh VM.
#[derive(Debug)]
pub struct NestedHost {
    /// Run scripts on this host (its KVM is usable) rather than in an outer VM.
    direct: bool,
    kernel: PathBuf,
    initrd: PathBuf,
    scratch: PathBuf,
    memory_mib: u32,
    cpus: u32,
    env: Vec<(String, String)>,
    writable: Vec<PathBuf>,
    /// Host directories under the tmpfs mount points that must stay visible.
    keep: Vec<PathBuf>,
    runs: AtomicU32,
}

impl NestedHost {
    /// A nested host using the outer kernel in `artifacts` and the test's scratch
    /// directory `scratch` (usually [`crate::TestScope::dir`]; it must be absolute and
    /// exist). Writes the initramfs there.
    pub fn new(artifacts: &Artifacts, scratch: &Path) -> Result<Self, NestedError> {
        let direct = runs_directly()?;
        let kernel = artifacts.dir().join(OUTER_KERNEL);
        if !direct && !kernel.is_file() {
            return Err(NestedError::NoOuterKernel(kernel));
        }
        if !scratch.is_absolute() || !scratch.is_dir() {
            return Err(NestedError::Io {
                what: "using as the scratch directory",
                path: scratch.to_owned(),
                source: std::io::Error::other("not an absolute path to a directory"),
            });
        }
        let scratch = scratch.to_owned();
        let initrd = scratch.join("nested-initrd.img");
        let host = Self {
            direct,
            kernel,
            initrd,
            scratch,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            env: Vec::new(),
            writable: Vec::new(),
            keep: init::hidden_by_tmpfs(&needed_dirs(artifacts)),
            runs: AtomicU32::new(0),
        };
        if direct {
            return Ok(host);
        }
        crate::image::busybox_initramfs(&init::script(&host.scratch))
            .map_err(|source| NestedError::Io {
                what: "reading",
                path: crate::image::BUSYBOX.into(),
                source,
            })?
            .with(Entry::Directory {
                path: "/host".into(),
                perm: 0o755,
            })
            .write_file(&host.initrd)?;
        Ok(host)
    }

    /// Whether scripts run on this host rather than in an outer VM.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Sets the outer VM's memory.
    #[must_use]
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the outer VM's vCPU count.
    #[must_use]
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Exports `key=value` to the script.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Mounts an empty tmpfs at `path` (absolute; created if its parent is writable)
    /// in addition to `/tmp`, `/run` and `/var/tmp`.
    #[must_use]
    pub fn writable(mut self, path: impl Into<PathBuf>) -> Self {
        self.writable.push(path.into());
        self
    }

    /// Boots the nested host, runs `script` with `/bin/sh` as root in the chrooted host
    /// root, and powers off. `timeout` bounds the script; the VM as a whole gets
    /// [`BOOT_ALLOWANCE`] more. An unsuccessful exit status is returned, not an error.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<NestedOutput, NestedError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let run_dir = self.scratch.join(format!(".nested-{n}"));
        fs::create_dir_all(&run_dir).map_err(|source| NestedError::Io {
            what: "creating",
            path: run_dir.clone(),
            source,
        })?;
        let mut env = self.env.clone();
        env.push((
            MODE_VAR.to_owned(),
            if self.direct { "direct" } else { "outer" }.to_owned(),
        ));
        // The outer VM mounts the scratch directory itself; run here, it must be kept too.
        let keep = if self.direct {
            let mut dirs = vec![self.scratch.clone()];
            dirs.extend(self.keep.iter().cloned());
            init::hidden_by_tmpfs(&dirs)
        } else {
            self.keep.clone()
        };
        let request = init::Request {
            env: &env,
            writable: &self.writable,
            keep: &keep,
            timeout,
        };
        for (name, text) in [
            (init::SCRIPT_FILE, script.to_owned()),
            (
                init::COMMAND_FILE,
                request.command_file(&self.scratch, &run_dir),
            ),
            (init::SETUP_FILE, request.setup_file()),
            (init::KEEP_FILE, request.keep_file()),
        ] {
            let path = run_dir.join(name);
            fs::write(&path, text).map_err(|source| NestedError::Io {
                what: "writing",
                path,
                source,
            })?;
        }
        if self.direct {
            return direct::run(&run_dir, timeout);
        }
        let cmd = self.qemu(n).timeout(timeout + BOOT_ALLOWANCE);
        let out = match cmd.output() {
            Ok(out) => out,
            Err(source) => {
                let console = match &source {
                    CmdError::Timeout { stdout, .. } => stdout.clone(),
                    _ => String::new(),
                };
                return Err(NestedError::Qemu { source, console });
            }
        };
        let console = out.stdout_text();
        let read = |name: &str| fs::read(run_dir.join(name)).unwrap_or_default();
        let status = String::from_utf8_lossy(&read(init::STATUS_FILE))
            .trim()
            .to_owned();
        let Ok(code) = status.parse::<i32>() else {
            let reason = String::from_utf8_lossy(&read(init::ERROR_FILE))
                .trim()
                .to_owned();
            return Err(NestedError::NoStatus {
                qemu_status: out.status.to_string(),
                elapsed: out.elapsed,
                reason: if reason.is_empty() {
                    format!("; QEMU stderr: {}", out.stderr_text().trim())
                } else {
                    format!(": {reason}")
                },
                console,
            });
        };
        Ok(NestedOutput {
            code,
            stdout: read(init::STDOUT_FILE),
            stderr: read(init::STDERR_FILE),
            boot: init::boot_time(&console),
            console,
            elapsed: out.elapsed,
        })
    }

    /// The outer QEMU for run `n`.
    fn qemu(&self, n: u32) -> Cmd {
        let scratch = self.scratch.display().to_string();
        Cmd::new("qemu-system-x86_64")
            .args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
            // One CPU per socket: without ACPI the kernel finds CPUs in SeaBIOS's MP
            // table, which lists one per socket.
            .args(["-smp", &format!("{0},sockets={0}", self.cpus)])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &self.cmdline(n)])
            .args([
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-fsdev",
                &format!(
                    "local,id=scratch,path={},security_model=none,multidevs=remap",
                    option_value(&scratch)
                ),
                "-device",
                "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
            ])
    }

    fn cmdline(&self, n: u32) -> String {
        format!(
            "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} {}={n}",
            host_tsc_khz().unwrap_or(FALLBACK_TSC_KHZ),
            init::RUN_PARAM
        )
    }
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn option_value(s: &str) -> String {
    s.replace(',', ",,")
}

/// The host's TSC frequency from `/proc/cpuinfo` (`cpu MHz`): under TCG the guest's TSC
/// is the host's.
fn host_tsc_khz() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    // A finite, positive MHz value is far below u64::MAX kHz.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// What scripts run from the build machine: the artifacts and this test's cargo target
/// directory (drivers built beside it). A checkout under `/tmp` needs them kept visible.
fn needed_dirs(artifacts: &Artifacts) -> Vec<PathBuf> {
    let mut dirs = vec![artifacts.dir().to_path_buf()];
    // <target>/<profile>/deps/<test binary>: keep <target>/<profile>.
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        dirs.push(profile);
    }
    dirs
}

/// [`HOST_MODE_ENV`], else whether this host's KVM runs standard guests.
fn runs_directly() -> Result<bool, NestedError> {
    match std::env::var(HOST_MODE_ENV).ok().as_deref() {
        Some("direct") => Ok(true),
        Some("outer") => Ok(false),
        None | Some("") => Ok(matches!(
            husk_hypervisor::probe::HostProbe::default().kvm(),
            husk_hypervisor::probe::KvmSupport::Usable
        )),
        Some(other) => Err(NestedError::BadMode(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_outer_kernel_says_how_to_build_it() {
        let dir = std::env::temp_dir().join(format!("husk-nested-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = NestedHost::new(&Artifacts::new(&dir), &dir).unwrap_err();
        assert!(matches!(err, NestedError::NoOuterKernel(_)), "{err}");
        assert!(err.to_string().contains("cargo xtask build"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commas_in_paths_are_escaped_for_qemu() {
        assert_eq!(option_value("/a,b/c"), "/a,,b/c");
    }
}
