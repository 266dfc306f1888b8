//! [`VhostUserVsock`]: the hybrid-vsock device served over vhost-user, with its threads.
//!
//! Threads: `vhost-user-vsock` waits for QEMU, runs the vhost-user session and cleans up after
//! it; the library adds one thread for vhost-user requests and one vring worker that runs the
//! device. When QEMU disconnects (or `stop` is called) every thread ends, all connections close
//! and the hybrid socket file is removed (by the device's listener when it is dropped).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use slog::{Logger, info, o, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::device::{DeviceError, VsockDevice};
use super::muxer::MuxerConfig;
use super::vhost_user::{HOST_EVENT, VsockBackend};

/// How long `stop` waits for the threads; past it they are left to finish on their own
/// (a wedged front end must not hang the shim's teardown).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct VhostUserVsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    /// Leave the hybrid socket's file behind when the device goes (a jailed backend may not
    /// unlink; the shim removes it).
    pub leave_socket_file: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("cannot create the vhost-user daemon: {0}")]
    Daemon(#[source] DaemonError),
    #[error("cannot watch the device's host sockets: {0}")]
    RegisterHostEvents(io::Error),
    #[error("cannot create the stop event: {0}")]
    StopEvent(io::Error),
    #[error("cannot spawn the vhost-user thread: {0}")]
    Spawn(io::Error),
}

type Daemon = VhostUserDaemon<Arc<RwLock<VsockBackend>>>;

/// vhost-user-backend's error, which implements `Display` but not `std::error::Error`: kept
/// whole as the source of [`VsockError::Daemon`].
#[derive(Debug)]
pub struct DaemonError(pub vhost_user_backend::Error);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DaemonError {}

/// State shared between the handle and the serving thread.
struct Control {
    stop_requested: AtomicBool,
    /// Wakes the serving thread while it waits for QEMU to connect.
    stop_event: EventFd,
    /// Ends the vhost-user session once QEMU is connected.
    session: Mutex<Option<ShutdownHandle>>,
    finished: AtomicBool,
}

pub struct VhostUserVsock {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
    log: Logger,
}

impl VhostUserVsock {
    /// Binds the hybrid socket at `config.uds_path` (fails if it exists), then serves vhost-user on
    /// `vhost_listener` (already bound by the caller; QEMU connects to it) on background thread(s).
    pub fn start(
        config: VhostUserVsockConfig,
        vhost_listener: UnixListener,
        log: Logger,
    ) -> Result<Self, VsockError> {
        let log = log.new(o!("device" => "vsock", "cid" => config.guest_cid));
        let muxer = MuxerConfig {
            remove_socket_on_drop: !config.leave_socket_file,
            ..MuxerConfig::default()
        };
        let device =
            VsockDevice::with_config(config.guest_cid, &config.uds_path, muxer, log.clone())?;
        let device_fd = std::os::fd::AsRawFd::as_raw_fd(&device);
        let backend = Arc::new(RwLock::new(VsockBackend::new(device, log.clone())));
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = Daemon::new("husk-vsock".to_owned(), backend, memory)
            .map_err(|e| VsockError::Daemon(DaemonError(e)))?;
        for handler in daemon.get_epoll_handlers() {
            handler
                .register_listener(device_fd, EventSet::IN, u64::from(HOST_EVENT))
                .map_err(VsockError::RegisterHostEvents)?;
        }
        let control = Arc::new(Control {
            stop_requested: AtomicBool::new(false),
            stop_event: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| VsockError::StopEvent(e.into()))?,
            session: Mutex::new(None),
            finished: AtomicBool::new(false),
        });
        let (done_tx, done) = mpsc::channel();
        let thread = {
            let control = control.clone();
            let log = log.clone();
            thread::Builder::new()
                .name("vhost-user-vsock".to_owned())
                .spawn(move || {
                    serve(daemon, vhost_listener, &control, &log);
                    control.finished.store(true, Ordering::Release);
                    let _ = done_tx.send(());
                })
                .map_err(VsockError::Spawn)?
        };
        info!(log, "hybrid vsock ready"; "uds" => %config.uds_path.display());
        Ok(Self {
            control,
            thread: Some(thread),
            done,
            log,
        })
    }

    /// Stops serving, joins the threads (bounded wait), removes the hybrid socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the vhost-user session is over (QEMU disconnected) and the device is
    /// gone.
    pub fn wait(&self) {
        // An error means the serving thread is gone too.
        let _ = self.done.recv();
    }

    /// True once the vhost-user front end (QEMU) has disconnected or the worker ended.
    pub fn is_finished(&self) -> bool {
        self.control.finished.load(Ordering::Acquire)
            || self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        request_stop(&self.control);
        match self.done.recv_timeout(STOP_TIMEOUT) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    warn!(self.log, "vhost-user-vsock thread panicked");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                warn!(
                    self.log,
                    "vhost-user-vsock did not stop in time; leaving it behind"
                );
            }
        }
    }
}

impl Drop for VhostUserVsock {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn request_stop(control: &Control) {
    control.stop_requested.store(true, Ordering::Release);
    let _ = control.stop_event.write(1);
    let session = control
        .session
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(session) = session.as_ref() {
        session.shutdown();
    }
}

/// Waits for QEMU, runs the session until it ends, then tears the device down.
fn serve(mut daemon: Daemon, vhost_listener: UnixListener, control: &Control, log: &Logger) {
    // The library's accept loop spins on a non-blocking listener; poll() already told us a
    // connection is waiting, so a blocking accept returns at once.
    if wait_for_frontend(&vhost_listener, control, log)
        && vhost_listener.set_nonblocking(false).is_ok()
    {
        let mut listener = Listener::from(vhost_listener);
        match daemon.start(&mut listener) {
            Ok(()) => {
                info!(log, "vhost-user front end connected");
                {
                    let mut session = control
                        .session
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *session = daemon.shutdown_handle();
                    // stop() may have run before the handle existed.
                    if control.stop_requested.load(Ordering::Acquire) {
                        daemon.request_shutdown();
                    }
                }
                match daemon.wait() {
                    Ok(()) => info!(log, "vhost-user front end disconnected"),
                    Err(e) => info!(log, "vhost-user session ended"; "reason" => %e),
                }
                control
                    .session
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
            }
            Err(e) => warn!(log, "vhost-user accept failed"; "error" => %e),
        }
    }
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    // Dropping the daemon joins the vring worker and drops the device: connections close and
    // the hybrid socket file is removed.
    drop(daemon);
}

/// Blocks until QEMU connects (true) or a stop is requested (false).
fn wait_for_frontend(listener: &UnixListener, control: &Control, log: &Logger) -> bool {
    loop {
        if control.stop_requested.load(Ordering::Acquire) {
            return false;
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(control.stop_event.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[1]) {
                    return false;
                }
                if ready(&fds[0]) {
                    return true;
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                warn!(log, "waiting for the vhost-user front end failed"; "error" => %e);
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn start(dir: &tempfile::TempDir) -> (VhostUserVsock, PathBuf, PathBuf) {
        let uds = dir.path().join("v.sock");
        let vhost = dir.path().join("vhost.sock");
        let listener = UnixListener::bind(&vhost).unwrap();
        let config = VhostUserVsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
            leave_socket_file: false,
        };
        let log = Logger::root(slog::Discard, o!());
        (
            VhostUserVsock::start(config, listener, log).unwrap(),
            uds,
            vhost,
        )
    }

    #[test]
    fn stop_before_the_front_end_connects_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (vsock, uds, _) = start(&dir);
        assert!(uds.exists());
        assert!(!vsock.is_finished());
        let started = Instant::now();
        vsock.stop();
        assert!(started.elapsed() < STOP_TIMEOUT);
        assert!(!uds.exists(), "hybrid socket file removed");
    }

    #[test]
    fn front_end_disconnect_finishes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (vsock, uds, vhost) = start(&dir);
        drop(UnixStream::connect(&vhost).unwrap());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !vsock.is_finished() {
            assert!(Instant::now() < deadline, "never noticed the disconnect");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!uds.exists(), "hybrid socket file removed");
        vsock.stop();
    }

    #[test]
    fn stop_while_connected_ends_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let (vsock, uds, vhost) = start(&dir);
        let _front_end = UnixStream::connect(&vhost).unwrap();
        thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        vsock.stop();
        assert!(started.elapsed() < STOP_TIMEOUT);
        assert!(!uds.exists());
    }

    #[test]
    fn refuses_an_existing_socket_path_and_reserved_cids() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("taken.sock");
        let _other = UnixListener::bind(&uds).unwrap();
        let log = Logger::root(slog::Discard, o!());
        let listener = UnixListener::bind(dir.path().join("vhost.sock")).unwrap();
        let config = VhostUserVsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
            leave_socket_file: false,
        };
        assert!(VhostUserVsock::start(config, listener, log.clone()).is_err());
        assert!(uds.exists(), "someone else's socket is left alone");
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let listener = UnixListener::bind(dir.path().join(format!("v{cid}"))).unwrap();
            let config = VhostUserVsockConfig {
                guest_cid: cid,
                uds_path: dir.path().join("new.sock"),
                leave_socket_file: false,
            };
            let err = VhostUserVsock::start(config, listener, log.clone()).err();
            assert!(
                matches!(err, Some(VsockError::Device(DeviceError::InvalidCid(_)))),
                "cid {cid}"
            );
        }
    }
}
