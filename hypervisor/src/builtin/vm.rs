//! A running `husk-vmm` with its virtiofsd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{EXIT_GUEST_CRASHED, EXIT_GUEST_STOPPED, EXIT_SETUP_FAILED, EXIT_VCPU_FAILED};
use crate::child::{Supervised, describe};
use crate::spec::VmSpec;
use crate::vmm::{VmExit, VmHandle};

/// virtiofsd exits by itself once its VM is gone; give it this long.
const HELPER_GRACE: Duration = Duration::from_secs(1);

pub(super) struct BuiltinVm {
    vmm: Option<Supervised>,
    helpers: Vec<Supervised>,
    /// Files this VM created; removed on stop. The hybrid socket is the monitor's own, but
    /// a killed monitor cannot remove it.
    files: Vec<PathBuf>,
    uds: PathBuf,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    stop_requested: Arc<AtomicBool>,
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
    pub(super) fn new(spec: &VmSpec, mut files: Vec<PathBuf>) -> Self {
        files.push(spec.vsock.uds_path.clone());
        Self {
            vmm: None,
            helpers: Vec::new(),
            files,
            uds: spec.vsock.uds_path.clone(),
            exit_tx: Arc::new(watch::channel(None).0),
            stop_requested: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn add_helper(&mut self, helper: Supervised) {
        self.helpers.push(helper);
    }

    pub(super) fn set_vmm(&mut self, vmm: Supervised) {
        let mut exit = vmm.exit_watch();
        let tx = self.exit_tx.clone();
        let requested = self.stop_requested.clone();
        tokio::spawn(async move {
            if let Ok(status) = exit.wait_for(Option::is_some).await {
                let description = status.map(describe_status).unwrap_or_default();
                let _ = tx.send(Some(VmExit {
                    description,
                    requested: requested.load(Ordering::SeqCst),
                }));
            }
        });
        self.vmm = Some(vmm);
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[async_trait]
impl VmHandle for BuiltinVm {
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
            let status = vmm.stop(grace).await;
            // The watcher task may not have run yet: callers read `exited()` right after.
            self.exit_tx.send_if_modified(|exit| {
                let unset = exit.is_none();
                if unset {
                    *exit = Some(VmExit {
                        description: describe_status(status),
                        requested: true,
                    });
                }
                unset
            });
        }
        for h in &self.helpers {
            h.stop(HELPER_GRACE).await;
        }
        self.remove_files();
    }
}

impl Drop for BuiltinVm {
    fn drop(&mut self) {
        // Children are killed by their own Drop; leave no socket files behind.
        self.remove_files();
    }
}
