//! A running QEMU VM with its helpers: the in-process vsock backend and virtiofsd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::child::{Supervised, describe};
use crate::spec::VmSpec;
use crate::vmm::{VmExit, VmHandle};
use crate::vsock::VhostUserVsock;

/// How long helpers get to exit on their own once the VM is gone (virtiofsd exits when its
/// vhost-user peer disconnects).
const HELPER_GRACE: Duration = Duration::from_secs(1);

pub(super) struct QemuVm {
    vmm: Option<Supervised>,
    helpers: Vec<Supervised>,
    vsock: Mutex<Option<VhostUserVsock>>,
    /// Sockets this VM created; removed on stop.
    sockets: Vec<PathBuf>,
    uds: PathBuf,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    stop_requested: Arc<AtomicBool>,
}

impl QemuVm {
    pub(super) fn new(spec: &VmSpec, vsock: VhostUserVsock, mut sockets: Vec<PathBuf>) -> Self {
        sockets.push(spec.vsock.uds_path.clone());
        Self {
            vmm: None,
            helpers: Vec::new(),
            vsock: Mutex::new(Some(vsock)),
            sockets,
            uds: spec.vsock.uds_path.clone(),
            exit_tx: Arc::new(watch::channel(None).0),
            stop_requested: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn add_helper(&mut self, helper: Supervised) {
        self.helpers.push(helper);
    }

    /// Takes ownership of the VMM process and starts translating its exit into a [`VmExit`].
    pub(super) fn set_vmm(&mut self, vmm: Supervised) {
        let mut exit = vmm.exit_watch();
        let tx = self.exit_tx.clone();
        let requested = self.stop_requested.clone();
        tokio::spawn(async move {
            if let Ok(status) = exit.wait_for(Option::is_some).await {
                let description = status.map(describe).unwrap_or_default();
                let _ = tx.send(Some(VmExit {
                    description,
                    requested: requested.load(Ordering::SeqCst),
                }));
            }
        });
        self.vmm = Some(vmm);
    }

    fn stop_vsock(&self) {
        let taken = self.vsock.lock().ok().and_then(|mut v| v.take());
        if let Some(vsock) = taken {
            vsock.stop();
        }
    }

    fn remove_sockets(&self) {
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

#[async_trait]
impl VmHandle for QemuVm {
    fn pid(&self) -> u32 {
        self.vmm.as_ref().map(Supervised::pid).unwrap_or_default()
    }

    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_tx.subscribe()
    }

    fn diagnostics(&self) -> String {
        let mut parts = Vec::new();
        for p in self.vmm.iter().chain(self.helpers.iter()) {
            let tail = p.stderr_tail();
            if !tail.is_empty() {
                parts.push(format!("{}: {tail}", p.role()));
            }
        }
        parts.join("; ")
    }

    fn processes(&self) -> Vec<(String, u32)> {
        self.vmm
            .iter()
            .chain(self.helpers.iter())
            .map(|p| (p.role().to_string(), p.pid()))
            .collect()
    }

    async fn stop(&self, grace: Duration) {
        self.stop_requested.store(true, Ordering::SeqCst);
        if let Some(vmm) = &self.vmm {
            vmm.stop(grace).await;
        }
        for h in &self.helpers {
            h.stop(HELPER_GRACE).await;
        }
        // The vsock backend's join may block briefly; keep it off the async executor.
        let taken = self.vsock.lock().ok().and_then(|mut v| v.take());
        if let Some(vsock) = taken {
            let _ = tokio::task::spawn_blocking(move || vsock.stop()).await;
        }
        self.remove_sockets();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Launch failed half-way or the owner forgot to stop: helpers are killed by their own
        // Drop; release the device and the socket files.
        self.stop_vsock();
        self.remove_sockets();
    }
}
