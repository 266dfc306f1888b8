//! A running QEMU VM with its helpers: the in-process vsock backend and virtiofsd.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::child::{Supervised, describe};
use crate::spec::VmSpec;
use crate::vm_processes::VmProcesses;
use crate::vmm::{VmExit, VmHandle};
use crate::vsock::VhostUserVsock;

pub(super) struct QemuVm {
    processes: VmProcesses,
    vsock: Mutex<Option<VhostUserVsock>>,
}

impl QemuVm {
    /// `sockets`: what this VM created besides the hybrid socket; removed on stop.
    pub(super) fn new(spec: &VmSpec, vsock: VhostUserVsock, sockets: Vec<PathBuf>) -> Self {
        Self {
            processes: VmProcesses::new(&spec.vsock.uds_path, sockets, describe),
            vsock: Mutex::new(Some(vsock)),
        }
    }

    pub(super) fn add_helper(&mut self, helper: Supervised) {
        self.processes.add_helper(helper);
    }

    /// Takes ownership of the VMM process and starts translating its exit into a [`VmExit`].
    pub(super) fn set_vmm(&mut self, vmm: Supervised) {
        self.processes.set_vmm(vmm);
    }

    fn take_vsock(&self) -> Option<VhostUserVsock> {
        self.vsock.lock().ok().and_then(|mut v| v.take())
    }
}

#[async_trait]
impl VmHandle for QemuVm {
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
        // The vsock backend's join may block briefly; keep it off the async executor.
        if let Some(vsock) = self.take_vsock() {
            let _ = tokio::task::spawn_blocking(move || vsock.stop()).await;
        }
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Launch failed half-way or the owner forgot to stop: release the device (the
        // processes and files go with `VmProcesses`).
        if let Some(vsock) = self.take_vsock() {
            vsock.stop();
        }
    }
}
