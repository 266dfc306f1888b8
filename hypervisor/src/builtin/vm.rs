//! A running `husk-vmm` with its virtiofsd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{EXIT_GUEST_CRASHED, EXIT_GUEST_STOPPED, EXIT_SETUP_FAILED, EXIT_VCPU_FAILED};
use crate::child::{Supervised, describe};
use crate::spec::VmSpec;
use crate::vm_processes::VmProcesses;
use crate::vmm::{VmExit, VmHandle};

pub(super) struct BuiltinVm {
    processes: VmProcesses,
}

/// The monitor's exit status in words.
pub(super) fn describe_status(status: std::process::ExitStatus) -> String {
    let meaning = match status.code() {
        Some(EXIT_GUEST_STOPPED) => "the guest stopped",
        Some(EXIT_SETUP_FAILED) => "the VM could not be started",
        Some(EXIT_VCPU_FAILED) => "KVM failed while running the guest",
        Some(EXIT_GUEST_CRASHED) => "the guest crashed",
        Some(_) => "unexpected status",
        None => "the monitor was killed",
    };
    format!("husk-vmm {} ({meaning})", describe(status))
}

impl BuiltinVm {
    /// `files`: what this VM created besides the hybrid socket (the monitor's config, the
    /// virtiofsd socket); removed on stop.
    pub(super) fn new(spec: &VmSpec, files: Vec<PathBuf>) -> Self {
        Self {
            processes: VmProcesses::new(&spec.vsock.uds_path, files, describe_status),
        }
    }

    pub(super) fn add_helper(&mut self, helper: Supervised) {
        self.processes.add_helper(helper);
    }

    pub(super) fn set_vmm(&mut self, vmm: Supervised) {
        self.processes.set_vmm(vmm);
    }
}

#[async_trait]
impl VmHandle for BuiltinVm {
    fn pid(&self) -> u32 {
        self.processes.pid()
    }

    fn vsock_uds(&self) -> &Path {
        self.processes.vsock_uds()
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.processes.exited()
    }

    fn diagnostics(&self) -> String {
        self.processes.diagnostics()
    }

    fn processes(&self) -> Vec<(String, u32)> {
        self.processes.processes()
    }

    async fn stop(&self, grace: Duration) {
        self.processes.stop(grace).await;
    }
}
