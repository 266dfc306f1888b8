//! The built-in microVM monitor (`builtin` backend): `husk-vmm`, a small rust-vmm based VMM
//! that boots the husk guest kernel directly (PVH or 64-bit boot protocol, no firmware) with
//! virtio-mmio devices: hybrid vsock (the same [`crate::vsock`] device QEMU uses over
//! vhost-user), virtio-fs through virtiofsd (vhost-user frontend), optional virtio-net on a
//! tap; plus a 16550 console on stdout, an i8042 for resets and a boot timer.
//!
//! The monitor is its own process, as QEMU is: [`BuiltinVmm`] writes the VM description as
//! JSON into the pod's run directory, starts virtiofsd and `husk-vmm --config <file>` as
//! supervised children (die with the shim, bounded output capture) and returns a
//! [`VmHandle`]. A separate process keeps a KVM or device bug from taking the shim down, lets
//! the VMM run with fewer privileges later, and makes its memory overhead measurable alone.
//!
//! Exit status of `husk-vmm` (what the shim reports): [`EXIT_GUEST_STOPPED`] when the guest
//! rebooted (the agent reboots to power off; with `reboot=k` Linux resets through the
//! i8042, and `panic=-1` turns a guest panic into the same), [`EXIT_SETUP_FAILED`] when the VM could not be built,
//! [`EXIT_VCPU_FAILED`] when KVM failed at run time, [`EXIT_GUEST_CRASHED`] for a crash event.
//!
//! Modules follow the machine: [`arch`] (layout, boot structures, registers), [`kvm`] (VM,
//! memory, vCPUs), [`devices`] (no KVM knowledge), [`device_manager`] (addresses, IRQs,
//! irqfd/ioeventfd wiring, command line), [`builder`] (config → running VM).

pub mod arch;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
mod exit_status;
pub mod kvm;
pub mod seccomp;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use slog::{Logger, info};
use tokio::process::Command;

pub use config::{FsConfig, JailConfig, NetConfig, VmConfig, VsockConfig};

use crate::child::{Stdout, Supervised};
use crate::spec::VmSpec;
use crate::virtiofsd;
use crate::vm_processes::VmProcesses;
use crate::vmm::{VmHandle, Vmm, VmmError};
use crate::vmm_ids::IdClaim;

/// The guest stopped by itself (power off, reboot, triple fault, panic with `panic=-1`).
pub const EXIT_GUEST_STOPPED: i32 = 0;
/// The VM could not be built (bad config, missing kernel, no KVM, …).
pub const EXIT_SETUP_FAILED: i32 = 1;
/// Bad command line.
pub const EXIT_USAGE: i32 = 2;
/// KVM failed while the guest ran.
pub const EXIT_VCPU_FAILED: i32 = 3;
/// The guest reported a crash (KVM system event).
pub const EXIT_GUEST_CRASHED: i32 = 4;

/// Name of the monitor binary.
pub const VMM_BINARY: &str = "husk-vmm";
/// Physical address of the boot timer's MMIO page.
pub const BOOT_TIMER_MMIO_ADDR: u64 = arch::BOOT_TIMER_MMIO_ADDR;
const CONFIG_FILE: &str = "husk-vmm.json";
/// The empty directory the monitor's jail root is mounted on (in its own mount namespace).
const JAIL_ROOT_DIR: &str = "vmm-root";
const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
/// husk's guest kernel parameters for this backend; the spec's come after, so they override.
/// `pci=off`: all devices are virtio-mmio, skip probing a PCI bus that is not there.
/// `reboot=k`: reset through the i8042, an explicit request the monitor sees as such. A
/// triple fault (`reboot=t`) cannot be told from a crash on AMD hosts, where KVM resets the
/// vCPU's registers on the shutdown exit.
const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=k pci=off";

pub struct BuiltinVmm {
    binary: PathBuf,
}

impl BuiltinVmm {
    /// `binary`: a path, or a name looked up beside the running executable and on `PATH`.
    pub fn new(binary: &str) -> Result<Self, VmmError> {
        Ok(Self {
            binary: locate_binary(binary)?,
        })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The monitor's VM description for `spec`.
    pub fn vm_config(spec: &VmSpec, fs_socket: &Path) -> Result<VmConfig, VmmError> {
        let vcpus = u8::try_from(spec.vcpus)
            .map_err(|_| VmmError::InvalidSpec(format!("{} vCPUs", spec.vcpus)))?;
        let mut cmdline = BASE_CMDLINE.to_string();
        if !spec.kernel_params.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(spec.kernel_params.trim());
        }
        Ok(VmConfig {
            name: spec.name.clone(),
            kernel: preferred_kernel(&spec.kernel),
            initrd: Some(spec.initrd.clone()),
            cmdline,
            vcpus,
            memory_mib: spec.memory_mib,
            vsock: Some(VsockConfig {
                guest_cid: spec.vsock.guest_cid,
                uds_path: spec.vsock.uds_path.clone(),
            }),
            fs: Some(FsConfig {
                socket: fs_socket.to_path_buf(),
                tag: spec.shared_fs.tag.clone(),
            }),
            net: Vec::new(),
            jail: None,
        })
    }
}

/// The uncompressed `vmlinux` beside a bzImage boots faster (PVH, no decompression); the
/// installed layout has `/usr/share/husk/vmlinux` beside `vmlinuz`.
pub fn preferred_kernel(kernel: &Path) -> PathBuf {
    let sibling = kernel.with_file_name("vmlinux");
    if kernel.file_name() != sibling.file_name() && sibling.is_file() {
        sibling
    } else {
        kernel.to_path_buf()
    }
}

pub(crate) fn locate_binary(name: &str) -> Result<PathBuf, VmmError> {
    let mut candidates = Vec::new();
    if name.contains('/') {
        candidates.push(PathBuf::from(name));
    } else {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join(name));
            // Test binaries live one level below the other binaries (target/*/deps).
            if let Some(up) = dir.parent() {
                candidates.push(up.join(name));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
    }
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| VmmError::HypervisorBinary {
            name: name.to_string(),
            reason: "was not found beside the shim or on PATH".into(),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[async_trait]
impl Vmm for BuiltinVmm {
    fn name(&self) -> String {
        "builtin".into()
    }

    async fn launch(&self, spec: &VmSpec, log: &Logger) -> Result<Box<dyn VmHandle>, VmmError> {
        spec.validate()?;
        let jail = JailDirs::of(spec)?;
        let id = spec.vmm_ids.claim(&spec.name)?;
        let fs_socket = jail.sockets.join(VIRTIOFSD_SOCKET);
        let mut config = Self::vm_config(spec, &fs_socket)?;
        config.jail = Some(JailConfig {
            root: jail.root.clone(),
            sockets: jail.sockets.clone(),
            uid: id.id(),
            gid: id.id(),
        });
        config
            .validate()
            .map_err(|e| VmmError::InvalidSpec(e.to_string()))?;
        // The monitor creates its vsock socket there, as its own uid.
        chown_to(&jail.sockets, config.jail.as_ref())?;
        let config_path = spec.run_dir.join(CONFIG_FILE);
        let json = config
            .to_json()
            .map_err(|e| VmmError::InvalidSpec(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(|source| VmmError::Spawn {
            what: "husk-vmm (writing its config)",
            source,
        })?;
        let mut vm = VmProcesses::new(
            &spec.vsock.uds_path,
            vec![fs_socket.clone(), config_path.clone()],
            exit_status::describe_status,
        );
        // Runs once the monitor is gone: its id is free again, its directories empty.
        vm.add_cleanup(Box::new(move || jail.remove(id)));
        vm.add_helper(virtiofsd::spawn(&spec.shared_fs, &fs_socket, log)?);
        // virtiofsd's socket was bound by the shim as root; only the pod's monitor may
        // connect to it.
        chown_to(&fs_socket, config.jail.as_ref())?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(&config_path);
        let vmm = Supervised::spawn("husk-vmm", cmd, Stdout::Log, None, log)?;
        info!(log, "VM started"; "vmm" => self.name(), "pid" => vmm.pid(),
              "kernel" => config.kernel.display().to_string(),
              "vcpus" => spec.vcpus, "memory_mib" => spec.memory_mib,
              "vmm_uid" => config.jail.as_ref().map(|j| j.uid));
        vm.set_vmm(vmm);
        Ok(Box::new(vm))
    }
}

/// The host directories of the monitor's jail: `root` (empty; the monitor mounts its root
/// on it in its own mount namespace) and `sockets` (the vsock socket's directory, owned by
/// the monitor's id, its `/run`).
struct JailDirs {
    root: PathBuf,
    sockets: PathBuf,
}

impl JailDirs {
    fn of(spec: &VmSpec) -> Result<Self, VmmError> {
        let sockets = spec.socket_dir()?;
        let root = spec.run_dir.join(JAIL_ROOT_DIR);
        crate::spec::create_private_dir(&root)?;
        Ok(Self { root, sockets })
    }

    /// After the monitor exited: the directories go (the shim removes the socket files),
    /// then the id is released.
    fn remove(self, id: IdClaim) {
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_dir(&self.sockets);
        drop(id);
    }
}

fn chown_to(path: &Path, jail: Option<&JailConfig>) -> Result<(), VmmError> {
    let Some(jail) = jail else { return Ok(()) };
    std::os::unix::fs::chown(path, Some(jail.uid), Some(jail.gid)).map_err(|source| {
        VmmError::Spawn {
            what: "husk-vmm (handing its sockets to its uid)",
            source,
        }
    })
}

/// Where the husk guest kernel was built on this machine, for tests that load it.
#[cfg(test)]
pub(crate) fn test_kernel_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/husk");
    dir.join("vmlinux").is_file().then_some(dir)
}

#[cfg(test)]
mod tests;
