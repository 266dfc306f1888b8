//! The host processes of one VM, whatever the backend: the monitor (QEMU or husk-vmm) and
//! its helpers (virtiofsd), the socket files they use, and the monitor's exit translated
//! into a [`VmExit`]. Backends wrap this and add what is theirs alone.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::child::Supervised;
use crate::vmm::VmExit;

/// How long helpers get to exit on their own once the VM is gone (virtiofsd exits when its
/// vhost-user peer disconnects).
const HELPER_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct VmProcesses {
    vmm: Option<Supervised>,
    helpers: Vec<Supervised>,
    /// Files this VM created; removed on stop and on drop (a killed monitor cannot).
    files: Vec<PathBuf>,
    uds: PathBuf,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    stop_requested: Arc<AtomicBool>,
    /// The monitor's exit status in words.
    describe: fn(ExitStatus) -> String,
}

impl VmProcesses {
    /// `uds`: the hybrid-vsock socket (removed with `files`); `describe` words the monitor's
    /// exit status.
    pub(crate) fn new(
        uds: &Path,
        mut files: Vec<PathBuf>,
        describe: fn(ExitStatus) -> String,
    ) -> Self {
        files.push(uds.to_path_buf());
        Self {
            vmm: None,
            helpers: Vec::new(),
            files,
            uds: uds.to_path_buf(),
            exit_tx: Arc::new(watch::channel(None).0),
            stop_requested: Arc::new(AtomicBool::new(false)),
            describe,
        }
    }

    pub(crate) fn add_helper(&mut self, helper: Supervised) {
        self.helpers.push(helper);
    }

    /// Takes ownership of the monitor and starts translating its exit into a [`VmExit`].
    pub(crate) fn set_vmm(&mut self, vmm: Supervised) {
        let mut exit = vmm.exit_watch();
        let tx = self.exit_tx.clone();
        let requested = self.stop_requested.clone();
        let describe = self.describe;
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

    pub(crate) fn pid(&self) -> u32 {
        self.vmm.as_ref().map(Supervised::pid).unwrap_or_default()
    }

    pub(crate) fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    pub(crate) fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_tx.subscribe()
    }

    /// The end of each process's stderr.
    pub(crate) fn diagnostics(&self) -> String {
        let mut parts = Vec::new();
        for p in self.all() {
            let tail = p.stderr_tail();
            if !tail.is_empty() {
                parts.push(format!("{}: {tail}", p.role()));
            }
        }
        parts.join("; ")
    }

    pub(crate) fn processes(&self) -> Vec<(String, u32)> {
        self.all()
            .map(|p| (p.role().to_string(), p.pid()))
            .collect()
    }

    /// Stops the monitor (`grace` to exit on its own, then SIGKILL) and the helpers, and
    /// removes the files. The exit is recorded as requested.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.stop_requested.store(true, Ordering::SeqCst);
        if let Some(vmm) = &self.vmm {
            let status = vmm.stop(grace).await;
            // The watcher task may not have run yet: callers read `exited()` right after.
            self.exit_tx.send_if_modified(|exit| {
                let unset = exit.is_none();
                if unset {
                    *exit = Some(VmExit {
                        description: (self.describe)(status),
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

    fn all(&self) -> impl Iterator<Item = &Supervised> {
        self.vmm.iter().chain(self.helpers.iter())
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for VmProcesses {
    fn drop(&mut self) {
        // Launch failed half-way or the owner forgot to stop: the processes are killed by
        // their own Drop; leave no socket or file behind.
        self.remove_files();
    }
}
