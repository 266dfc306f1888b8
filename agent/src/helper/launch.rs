//! The agent's side of the helper: spawn, send the request, await the reply.

use std::ffi::{CStr, CString, c_char, c_short};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use slog::{Logger, debug, warn};
use tokio::io::unix::AsyncFd;

use super::message;
use super::{HELPER_ARG, HELPER_FD, HelperError, HelperReply, HelperRequest};
use crate::reaper::{ExitReceiver, ExitRegistry};

/// Creating a container under TCG emulation takes seconds; this bounds a wedged helper.
pub const HELPER_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The helper exits right after replying; past this it is killed.
pub const HELPER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The helper's fd 3 is dup'ed from at least this number, so `dup2` onto 3 always clears
/// close-on-exec (a dup2 onto itself would not).
const SPAWN_FD_FLOOR: i32 = 10;

/// What the helper created.
#[derive(Debug)]
pub struct HelperOutcome {
    pub pid: i32,
    pub pty_master: Option<OwnedFd>,
}

pub struct HelperLauncher {
    exe: CString,
    exits: Arc<ExitRegistry>,
    reply_timeout: Duration,
    log: Logger,
}

impl HelperLauncher {
    /// A launcher re-executing the running binary.
    pub fn new(exits: Arc<ExitRegistry>, log: Logger) -> Self {
        Self {
            exe: c"/proc/self/exe".to_owned(),
            exits,
            reply_timeout: HELPER_REPLY_TIMEOUT,
            log,
        }
    }

    /// Runs one helper to completion. `fds` are the process's stdio, as `request.stdio` says.
    pub async fn run(
        &self,
        request: &HelperRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<HelperOutcome, HelperError> {
        let bytes = message::encode(request)?;
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
        debug!(self.log, "helper started"; "pid" => pid, "container" => &request.container_id);
        let wants_terminal = request.console_dir.is_some();
        let result = self
            .exchange(ours, &bytes, fds, exit.clone(), wants_terminal)
            .await;
        self.reap(pid, exit).await;
        result
    }

    async fn exchange(
        &self,
        ours: OwnedFd,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        mut exit: ExitReceiver,
        wants_terminal: bool,
    ) -> Result<HelperOutcome, HelperError> {
        // SAFETY: the OwnedFd owns the socket and keeps it open until the AsyncFd drops it.
        let sock = unsafe { AsyncFd::register(ours) }.map_err(|e| HelperError::Setup(e.into()))?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        // One small datagram into a fresh socket never blocks.
        message::send(sock.get_ref().as_fd(), bytes, &borrowed).map_err(HelperError::Send)?;
        drop(borrowed);
        // The kernel holds the in-flight copies; ours must go so pipes see EOF later.
        drop(fds);

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

/// posix_spawn file actions, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn` before this value was created.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// posix_spawn attributes, destroyed on drop.
struct SpawnAttr(libc::posix_spawnattr_t);

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn` before this value was created.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(what: &'static str, rc: i32) -> Result<(), HelperError> {
    match rc {
        0 => Ok(()),
        errno => Err(HelperError::Spawn {
            exe: what.to_owned(),
            source: Errno::from_raw(errno),
        }),
    }
}

/// Spawns `exe HELPER_ARG` with stdio on /dev/null and `sock` as fd 3. posix_spawn (vfork +
/// exec in glibc) runs no Rust code in the child, so it is safe from a threaded process.
fn spawn(exe: &CStr, sock: BorrowedFd<'_>) -> Result<i32, HelperError> {
    let raw = fcntl(sock.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(SPAWN_FD_FLOOR))
        .map_err(HelperError::Socket)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let high = unsafe { OwnedFd::from_raw_fd(raw) };
    let arg = CString::new(HELPER_ARG).map_err(|_| HelperError::Socket(Errno::EINVAL))?;
    let argv: [*mut c_char; 3] = [
        c"husk-agent".as_ptr().cast_mut(),
        arg.as_ptr().cast_mut(),
        ptr::null_mut(),
    ];
    let env = c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let envp: [*mut c_char; 2] = [env.as_ptr().cast_mut(), ptr::null_mut()];

    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: init writes a valid value into the uninitialised storage we pass.
    check("file actions", unsafe {
        libc::posix_spawn_file_actions_init(actions.as_mut_ptr())
    })?;
    // SAFETY: initialised just above.
    let mut actions = FileActions(unsafe { actions.assume_init() });
    let a = &mut actions.0;
    // SAFETY: `a` is initialised; the path is a NUL-terminated static string.
    check("open /dev/null", unsafe {
        libc::posix_spawn_file_actions_addopen(a, 0, c"/dev/null".as_ptr(), libc::O_RDWR, 0)
    })?;
    for (from, to) in [(0, 1), (0, 2), (high.as_raw_fd(), HELPER_FD)] {
        // SAFETY: `a` is initialised; the fds are plain integers checked by posix_spawn.
        check("dup2", unsafe {
            libc::posix_spawn_file_actions_adddup2(a, from, to)
        })?;
    }

    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: init writes a valid value into the uninitialised storage we pass.
    check("attributes", unsafe {
        libc::posix_spawnattr_init(attr.as_mut_ptr())
    })?;
    // SAFETY: initialised just above.
    let mut attr = SpawnAttr(unsafe { attr.assume_init() });
    let flags = c_short::try_from(libc::POSIX_SPAWN_SETSIGMASK)
        .map_err(|_| HelperError::Socket(Errno::EINVAL))?;
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; the attr calls read initialised values.
    check("signal mask", unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::posix_spawnattr_setflags(&mut attr.0, flags)
            | libc::posix_spawnattr_setsigmask(&mut attr.0, empty.as_ptr())
    })?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: NUL-terminated strings, NULL-terminated
    // argv/envp arrays that outlive the call, and initialised actions/attributes.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(HelperError::Spawn {
            exe: exe.to_string_lossy().into_owned(),
            source: Errno::from_raw(rc),
        });
    }
    Ok(pid)
}
