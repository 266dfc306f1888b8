//! The helper process itself: single-threaded and short-lived, the only place where
//! libcontainer forks. See the module docs of [`crate::helper`].

use std::error::Error as StdError;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::executor::HuskExecutor;
use super::message;
use super::spawn::set_scheduler;
use super::{FailureKind, HELPER_FD, HelperError, HelperReply, HelperRequest, Operation};

/// How long the helper waits for libcontainer's pty master.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one request on fd 3, then returns (the caller exits).
pub fn run() -> Result<(), HelperError> {
    // SAFETY: the launcher spawned us with our end of the socketpair at HELPER_FD, and nothing
    // else in this process owns that descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    prepare_process(&sock)?;
    let (bytes, fds) = message::recv(sock.as_fd())
        .map_err(HelperError::Recv)?
        .ok_or(HelperError::NoReply)?;
    let request: HelperRequest = message::decode(&bytes)?;
    let (reply, master) = match leave_idle_priority().and_then(|()| execute(&request, fds)) {
        Ok((pid, master)) => (HelperReply::Started { pid }, master),
        Err(Failure { kind, message }) => (HelperReply::Failed { kind, message }, None),
    };
    let fds: Vec<BorrowedFd<'_>> = master.iter().map(AsFd::as_fd).collect();
    message::send(sock.as_fd(), &message::encode(&reply)?, &fds).map_err(HelperError::Send)
}

/// Makes the helper a clean parent for container processes.
fn prepare_process(sock: &OwnedFd) -> Result<(), HelperError> {
    let setup = |e: nix::Error| HelperError::Setup(e.into());
    fcntl(sock.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(setup)?;
    // Anything else inherited by mistake must not leak into containers.
    // SAFETY: close_range only closes descriptors; none above HELPER_FD is owned by Rust code
    // at this point of startup.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    // Rust's runtime ignores SIGPIPE and ignored signals survive exec: restore the default so
    // container processes start with it.
    // SAFETY: installs the default disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // No receive timeout: a spare waits for its request for as long as the agent keeps it,
    // and the agent closing its end (EOF) ends the wait.
    Ok(())
}

/// A spare helper was started under `SCHED_IDLE`; the container processes it creates must
/// be scheduled like everything else.
fn leave_idle_priority() -> Result<(), Failure> {
    set_scheduler(0, libc::SCHED_OTHER)
        .map_err(|e| Failure::internal(format!("leaving the spare helper's idle priority: {e}")))
}

struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Internal,
            message: message.into(),
        }
    }
}

impl From<LibcontainerError> for Failure {
    fn from(e: LibcontainerError) -> Self {
        let kind = match &e {
            LibcontainerError::Exist => FailureKind::AlreadyExists,
            LibcontainerError::IncorrectStatus(_) | LibcontainerError::NoDirectory => {
                FailureKind::WrongState
            }
            LibcontainerError::InvalidID(_)
            | LibcontainerError::MissingSpec(_)
            | LibcontainerError::InvalidSpec(_)
            | LibcontainerError::InvalidInput(_)
            | LibcontainerError::Spec(_) => FailureKind::InvalidSpec,
            _ => FailureKind::Internal,
        };
        Self {
            kind,
            message: error_chain(&e),
        }
    }
}

/// "outer: cause: root cause" — libcontainer's top-level messages alone are too vague.
fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn execute(req: &HelperRequest, fds: Vec<OwnedFd>) -> Result<(i32, Option<OwnedFd>), Failure> {
    let mut fds = fds.into_iter();
    let mut stdio = |passed: bool, write: bool| -> Result<OwnedFd, Failure> {
        if passed {
            return fds
                .next()
                .ok_or_else(|| Failure::internal("a stdio fd is missing"));
        }
        let null = OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null");
        null.map(OwnedFd::from)
            .map_err(|e| Failure::internal(format!("opening /dev/null: {e}")))
    };
    let stdin = stdio(req.stdio.stdin, false)?;
    let stdout = stdio(req.stdio.stdout, true)?;
    let stderr = stdio(req.stdio.stderr, true)?;
    let console = req
        .console_dir
        .as_deref()
        .map(ConsoleSocket::bind)
        .transpose()?;

    let builder = ContainerBuilder::new(req.container_id.clone(), SyscallType::default())
        .with_root_path(&req.state_root)?
        .with_console_socket(console.as_ref().map(|c| c.path.clone()))
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .validate_id()?;
    let pid = match &req.operation {
        Operation::Create { bundle } => {
            let container = builder
                .with_executor(HuskExecutor::for_init())
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            container
                .pid()
                .ok_or_else(|| Failure::internal("libcontainer reported no pid"))?
        }
        Operation::Exec {
            process_file,
            bundle,
        } => {
            let spec = Spec::load(bundle.join("config.json"))
                .map_err(|e| Failure::internal(format!("loading the container's spec: {e}")))?;
            builder
                .with_executor(HuskExecutor::for_exec(&spec))
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process_file))
                .build()?
        }
    };
    let master = console.map(ConsoleSocket::receive_master).transpose()?;
    Ok((pid.as_raw(), master))
}

/// The socket libcontainer sends the pty master to.
struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn bind(dir: &Path) -> Result<Self, Failure> {
        let path = dir.join(format!("{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Failure::internal(format!("binding {}: {e}", path.display())))?;
        Ok(Self { listener, path })
    }

    fn receive_master(self) -> Result<OwnedFd, Failure> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Failure::internal(format!("receiving the pty master: {what}: {e}"))
        };
        let timeout = PollTimeout::try_from(IO_TIMEOUT).map_err(|e| fail("timeout", &e))?;
        let mut pfd = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, timeout) {
            Ok(0) => return Err(fail("waiting", &"libcontainer never connected")),
            Ok(_) => {}
            Err(e) => return Err(fail("poll", &e)),
        }
        let (stream, _) = self.listener.accept().map_err(|e| fail("accept", &e))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| fail("timeout", &e))?;
        let (_name, mut fds) = message::recv(stream.as_fd())
            .map_err(|e| fail("recvmsg", &e))?
            .ok_or_else(|| fail("recvmsg", &"connection closed"))?;
        fds.pop()
            .ok_or_else(|| fail("recvmsg", &"no descriptor attached"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
