//! The built-in monitor backend: launches `husk-vmm` (the `husk-vmm` crate), husk's own
//! microVM monitor, for a pod.
//!
//! [`BuiltinVmm`] writes the VM description (a `husk_vmm_config::VmConfig`, with the jail
//! the monitor confines itself in) as JSON into the pod's run directory, starts virtiofsd and
//! `husk-vmm --config <file>` as supervised children (die with the shim, bounded output
//! capture) and returns a [`VmHandle`]. How the monitor's exit status reads:
//! [`exit_status`].

mod exit_status;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use slog::{Logger, info};
use tokio::process::Command;

pub use husk_vmm_config::VMM_BINARY;
use husk_vmm_config::{
    FIRST_TAP_FD, FsConfig, JailConfig, LaunchFile, NetConfig, VmConfig, VsockConfig,
};

use crate::binaries::{self, Search};
use crate::child::{Stdout, Supervised};
use crate::spec::{COMMON_KERNEL_PARAMS, VmSpec, write_launch_file};
use crate::virtiofsd;
use crate::vm_processes::VmProcesses;
use crate::vmm::{VmHandle, Vmm, VmmError};
use crate::vmm_ids::IdClaim;

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
            binary: binaries::locate(binary, Search::BesideShimThenPath)?,
        })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The monitor's VM description for `spec`.
    pub fn vm_config(spec: &VmSpec, fs_socket: &Path) -> Result<VmConfig, VmmError> {
        let vcpus = u8::try_from(spec.vcpus)
            .map_err(|_| VmmError::InvalidSpec(format!("{} vCPUs", spec.vcpus)))?;
        let mut cmdline = format!("{BASE_CMDLINE} {COMMON_KERNEL_PARAMS}");
        if !spec.kernel_params.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(spec.kernel_params.trim());
        }
        Ok(VmConfig {
            name: spec.name.clone(),
            kernel: spec.boot_kernel(),
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
            net: spec
                .net
                .iter()
                .zip(FIRST_TAP_FD..)
                .map(|(n, fd)| NetConfig {
                    name: n.name.clone(),
                    fd,
                    mac: n.mac,
                })
                .collect(),
            jail: None,
        })
    }
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
        config.validate()?;
        // The monitor creates its vsock socket there, as its own uid.
        chown_to(&jail.sockets, config.jail.as_ref())?;
        let config_path = spec.run_dir.join(CONFIG_FILE);
        write_launch_file(&config, &config_path, "husk-vmm (writing its config)")?;
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
        let vmm = Supervised::spawn("husk-vmm", cmd, Stdout::Log, spec.tap_fds()?, log)?;
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

#[cfg(test)]
mod tests;
