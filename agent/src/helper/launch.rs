//! The agent's side of the helper: take the spare or spawn one, send the request, await the
//! reply.
//!
//! **The spare.** Starting a helper (exec of the agent binary, its runtime's start-up) took
//! 40–80 ms of a container create's 250 ms under TCG, on the critical path of every pod
//! start. So the launcher keeps one helper started ahead of need, at idle priority, blocked
//! on its request: a create or exec hands the request to it, and a replacement is started
//! once that request is done. The spare costs one sleeping process whose text is the
//! agent binary's own pages.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use slog::{Logger, debug, warn};
use tokio::io::unix::AsyncFd;

use super::message;
use super::spawn::{set_scheduler, spawn};
use super::{HelperError, HelperReply, HelperRequest};
use crate::reaper::{ExitReceiver, ExitRegistry};

/// Creating a container under TCG emulation takes seconds; this bounds a wedged helper.
pub const HELPER_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The helper exits right after replying; past this it is killed.
pub const HELPER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the helper created.
#[derive(Debug)]
pub struct HelperOutcome {
    pub pid: i32,
    pub pty_master: Option<OwnedFd>,
}

/// A started helper and the agent's end of its socket.
struct Helper {
    pid: i32,
    sock: OwnedFd,
    exit: ExitReceiver,
}

impl Helper {
    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

pub struct HelperLauncher {
    exe: CString,
    exits: Arc<ExitRegistry>,
    reply_timeout: Duration,
    /// A helper started ahead of need, waiting for its request (see the module docs).
    spare: Mutex<Option<Helper>>,
    log: Logger,
}

impl HelperLauncher {
    /// A launcher re-executing the running binary.
    pub fn new(exits: Arc<ExitRegistry>, log: Logger) -> Self {
        Self {
            exe: c"/proc/self/exe".to_owned(),
            exits,
            reply_timeout: HELPER_REPLY_TIMEOUT,
            spare: Mutex::new(None),
            log,
        }
    }

    fn spare(&self) -> MutexGuard<'_, Option<Helper>> {
        // Only ever replaced whole: a poisoned slot is consistent.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a spare helper unless a live one is waiting already. Failing is not an error:
    /// the next request then starts its own helper.
    pub fn prepare_spare(&self) {
        let mut spare = self.spare();
        if spare.as_ref().is_some_and(|h| !h.has_exited()) {
            return;
        }
        match self.start_spare() {
            Ok(helper) => *spare = Some(helper),
            Err(e) => warn!(self.log, "starting a spare helper failed"; "error" => %e),
        }
    }

    /// Runs one helper to completion. `fds` are the process's stdio, as `request.stdio` says.
    pub async fn run(
        &self,
        request: &HelperRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<HelperOutcome, HelperError> {
        let bytes = message::encode(request)?;
        let delivered = self.deliver(&bytes, &fds);
        // The kernel holds the in-flight copies; ours must go so pipes see EOF later.
        drop(fds);
        let (Helper { pid, sock, exit }, sent) = delivered?;
        let result = match sent {
            Ok(()) => {
                debug!(self.log, "helper has the request"; "pid" => pid, "container" => &request.container_id);
                let wants_terminal = request.console_dir.is_some();
                self.exchange(sock, exit.clone(), wants_terminal).await
            }
            Err(e) => {
                // Closing our end makes the helper exit: it never got a request.
                drop(sock);
                Err(HelperError::Send(e))
            }
        };
        self.reap(pid, exit).await;
        self.prepare_spare();
        result
    }

    /// Sends the request to the spare, or to a new helper when there is no spare or it cannot
    /// take the request (it died: nothing reached it, so nothing runs twice). A new helper's
    /// send result comes back with it, so that it is reaped either way.
    fn deliver(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
    ) -> Result<(Helper, std::io::Result<()>), HelperError> {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        // Taken out of the slot, so no other request can send to it too.
        let spare = self.spare().take();
        if let Some(spare) = spare.filter(|h| !h.has_exited()) {
            // It has read nothing yet: one datagram into its empty socket never blocks.
            match message::send(spare.sock.as_fd(), bytes, &borrowed) {
                Ok(()) => return Ok((spare, Ok(()))),
                Err(e) => {
                    debug!(self.log, "the spare helper is gone"; "pid" => spare.pid, "error" => %e)
                }
            }
        }
        let helper = self.start()?;
        let sent = message::send(helper.sock.as_fd(), bytes, &borrowed);
        Ok((helper, sent))
    }

    /// A helper at idle priority. One that died at once (then reaped, its pid maybe reused) is
    /// left alone, and found dead when it is needed.
    fn start_spare(&self) -> Result<Helper, HelperError> {
        let helper = self.start()?;
        if let Some(Err(e)) = self
            .exits
            .if_running(&helper.exit, || set_scheduler(helper.pid, libc::SCHED_IDLE))
        {
            debug!(self.log, "the spare helper keeps normal priority"; "error" => %e);
        }
        Ok(helper)
    }

    fn start(&self) -> Result<Helper, HelperError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(HelperError::Socket)?;
        set_nonblocking(&ours)?;
        let pid = spawn(&self.exe, theirs.as_fd())?;
        drop(theirs);
        let exit = self.exits.register(pid);
        debug!(self.log, "helper started"; "pid" => pid);
        Ok(Helper {
            pid,
            sock: ours,
            exit,
        })
    }

    /// Awaits the reply to the request the helper has.
    async fn exchange(
        &self,
        ours: OwnedFd,
        mut exit: ExitReceiver,
        wants_terminal: bool,
    ) -> Result<HelperOutcome, HelperError> {
        // SAFETY: the OwnedFd owns the socket and keeps it open until the AsyncFd drops it.
        let sock = unsafe { AsyncFd::register(ours) }.map_err(|e| HelperError::Setup(e.into()))?;
        let reply = tokio::select! {
            biased;
            reply = tokio::time::timeout(self.reply_timeout, recv_async(&sock)) => match reply {
                Err(_) => return Err(HelperError::Timeout(self.reply_timeout)),
                Ok(reply) => reply?,
            },
            status = exit.wait_for(Option::is_some) => {
                let status = status.map(|s| s.unwrap_or(-1)).unwrap_or(-1);
                // It may have replied just before exiting.
                match message::recv(sock.get_ref().as_fd()) {
                    Ok(reply) => reply,
                    Err(_) => return Err(HelperError::Died(status)),
                }
            }
        };
        let (bytes, mut fds) = reply.ok_or(HelperError::NoReply)?;
        match message::decode::<HelperReply>(&bytes)? {
            HelperReply::Started { pid } => {
                let expected = usize::from(wants_terminal);
                if fds.len() != expected {
                    return Err(HelperError::FdCount {
                        expected,
                        got: fds.len(),
                    });
                }
                Ok(HelperOutcome {
                    pid,
                    pty_master: fds.pop(),
                })
            }
            HelperReply::Failed { kind, message } => Err(HelperError::Failed { kind, message }),
        }
    }

    /// Waits (bounded) for the helper to exit, killing it if it lingers.
    async fn reap(&self, pid: i32, exit: ExitReceiver) {
        let mut waiter = exit.clone();
        let waited = tokio::time::timeout(HELPER_EXIT_TIMEOUT, waiter.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|status| *status));
        match waited {
            Ok(Ok(status)) => debug!(self.log, "helper exited"; "pid" => pid, "status" => ?status),
            _ => {
                warn!(self.log, "helper did not exit; killing it"; "pid" => pid);
                if let Err(e) = self.exits.signal_if_running(pid, &exit, libc::SIGKILL) {
                    warn!(self.log, "killing the helper failed"; "error" => %e);
                }
            }
        }
    }
}

async fn recv_async(
    sock: &AsyncFd<OwnedFd>,
) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>, HelperError> {
    loop {
        let mut guard = sock.readable().await.map_err(HelperError::Recv)?;
        if let Ok(result) = guard.try_io(|s| message::recv(s.get_ref().as_fd())) {
            return result.map_err(HelperError::Recv);
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), HelperError> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(HelperError::Socket)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(HelperError::Socket)?;
    Ok(())
}
