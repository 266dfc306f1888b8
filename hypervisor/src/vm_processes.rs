//! A running VM as the host sees it, whatever the backend: the monitor (QEMU or husk-vmm)
//! and its helpers (virtiofsd), the socket files they use, in-process devices to stop with
//! them (QEMU's vsock backend), and the monitor's exit translated into a [`VmExit`].

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::child::Supervised;
use crate::vmm::{LaunchTimes, VmExit, VmHandle};

/// How long helpers get to exit on their own once the VM is gone (virtiofsd exits when its
/// vhost-user peer disconnects).
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// Stops something in-process that serves the VM; may block briefly (a thread join).
pub(crate) type Cleanup = Box<dyn FnOnce() + Send>;

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
    /// Run once, after the processes are gone (on stop or drop).
    cleanups: Mutex<Vec<Cleanup>>,
    launched: LaunchTimes,
}

impl VmProcesses {
    /// `uds`: the hybrid-vsock socket; `files`: what else the VM created (both removed on
    /// stop); `describe` words the monitor's exit status.
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
            cleanups: Mutex::new(Vec::new()),
            launched: LaunchTimes::default(),
        }
    }

    /// Adds a running helper whose socket the shim bound already: it is ready now.
    pub(crate) fn add_helper(&mut self, helper: Supervised) {
        self.helpers.push(helper);
        self.launched.helpers_ready = Some(SystemTime::now());
    }

    /// Runs `cleanup` once the VM's processes are gone.
    pub(crate) fn add_cleanup(&mut self, cleanup: Cleanup) {
        if let Ok(c) = self.cleanups.get_mut() {
            c.push(cleanup);
        }
    }

    /// Takes ownership of the monitor and starts translating its exit into a [`VmExit`].
    pub(crate) fn set_vmm(&mut self, vmm: Supervised) {
        self.launched.vmm_spawned = Some(SystemTime::now());
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

    fn all(&self) -> impl Iterator<Item = &Supervised> {
        self.vmm.iter().chain(self.helpers.iter())
    }

    fn take_cleanups(&self) -> Vec<Cleanup> {
        self.cleanups
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[async_trait]
impl VmHandle for VmProcesses {
    fn pid(&self) -> u32 {
        self.vmm.as_ref().map(Supervised::pid).unwrap_or_default()
    }

    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_tx.subscribe()
    }

    /// The end of each process's stderr.
    fn diagnostics(&self) -> String {
        let mut parts = Vec::new();
        for p in self.all() {
            let tail = p.stderr_tail();
            if !tail.is_empty() {
                parts.push(format!("{}: {tail}", p.role()));
            }
        }
        parts.join("; ")
    }

    fn launch_times(&self) -> LaunchTimes {
        self.launched
    }

    fn processes(&self) -> Vec<(String, u32)> {
        self.all()
            .map(|p| (p.role().to_string(), p.pid()))
            .collect()
    }

    /// Stops the monitor (`grace` to exit on its own, then SIGKILL), the helpers and the
    /// in-process devices, and removes the files. The exit is recorded as requested.
    async fn stop(&self, grace: Duration) {
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
        for cleanup in self.take_cleanups() {
            // A join may block briefly; keep it off the async executor.
            let _ = tokio::task::spawn_blocking(cleanup).await;
        }
    }
}

impl Drop for VmProcesses {
    fn drop(&mut self) {
        // Launch failed half-way or the owner forgot to stop: the processes are killed by
        // their own Drop; stop the devices and leave no socket or file behind.
        self.remove_files();
        let cleanups = self.take_cleanups();
        let run = move || cleanups.into_iter().for_each(|cleanup| cleanup());
        // The cleanups release the monitor's uid: not before the monitor is gone.
        let exit = self.vmm.as_ref().map(Supervised::exit_watch);
        match (exit, tokio::runtime::Handle::try_current()) {
            (Some(mut exit), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = exit.wait_for(Option::is_some).await;
                    let _ = tokio::task::spawn_blocking(run).await;
                });
            }
            _ => run(),
        }
    }
}
