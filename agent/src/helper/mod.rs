//! The fork-safe way to create container processes.
//!
//! libcontainer forks (clone) to build a container, and forking a multi-threaded tokio
//! process is unsafe: only the forking thread survives in the child, with every lock the other
//! threads held (allocator, logger, runtime) stuck forever. So the agent never calls
//! libcontainer's create/exec itself. It re-executes its own binary (`/proc/self/exe`, with
//! `posix_spawn`, which is safe from threads) in a hidden helper mode:
//!
//! 1. the agent creates a `SOCK_SEQPACKET` socketpair and spawns the helper with one end as
//!    fd 3 and /dev/null as stdio — ahead of need, as the spare (see [`launch`]);
//! 2. it sends one [`HelperRequest`] (JSON) with the process's stdio fds (SCM_RIGHTS);
//! 3. the single-threaded helper calls libcontainer (`as_init` or `as_tenant`), and answers
//!    one [`HelperReply`] with the process's pid, plus the pty master (SCM_RIGHTS) when the
//!    process has a terminal;
//! 4. the helper exits; the container process, libcontainer's clone of the helper, is
//!    reparented to PID 1 — the agent — whose reaper sees its exit.
//!
//! SEQPACKET keeps each message whole, so there is no framing; messages are bounded.
//! The helper's exit is reaped by the agent's reaper like any other process.

pub mod child;
mod executor;
pub mod launch;
mod message;
mod spawn;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use launch::{HelperLauncher, HelperOutcome};

/// argv[1] that selects helper mode.
pub const HELPER_ARG: &str = "--husk-libcontainer-helper";
/// The helper's end of the socketpair.
pub const HELPER_FD: i32 = 3;
/// Largest message either side sends.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// What the helper should create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// A new container from `<bundle>/config.json`; its init waits for `start`.
    Create { bundle: PathBuf },
    /// A process in a running container, described by an OCI process JSON file; the
    /// container's bundle supplies the seccomp filter (see `executor`).
    Exec {
        process_file: PathBuf,
        bundle: PathBuf,
    },
}

/// Which stdio fds ride along with the request, in the order stdin, stdout, stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassedStdio {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperRequest {
    pub operation: Operation,
    pub container_id: String,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    pub stdio: PassedStdio,
    /// Set when the process gets a terminal: where to put the console socket.
    pub console_dir: Option<PathBuf>,
}

/// Why the helper could not create the process, as far as the caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The spec or process was rejected.
    InvalidSpec,
    AlreadyExists,
    /// The container is not in a state that allows this (e.g. exec into a stopped one).
    WrongState,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperReply {
    /// A pty master follows when the request asked for a terminal.
    Started {
        pid: i32,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

#[derive(Debug, Error)]
pub enum HelperError {
    #[error("creating the helper socket: {0}")]
    Socket(#[source] nix::Error),
    #[error("starting the helper {exe}: {source}")]
    Spawn { exe: String, source: nix::Error },
    #[error("sending to the helper: {0}")]
    Send(#[source] std::io::Error),
    #[error("receiving from the helper: {0}")]
    Recv(#[source] std::io::Error),
    #[error("a helper message was truncated")]
    Truncated,
    #[error("encoding a helper message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("decoding a helper message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the helper closed the connection without replying")]
    NoReply,
    #[error("the helper exited with status {0} without replying")]
    Died(i32),
    #[error("the helper did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("expected {expected} file descriptors from the peer, got {got}")]
    FdCount { expected: usize, got: usize },
    #[error("{message}")]
    Failed { kind: FailureKind, message: String },
    #[error("helper setup: {0}")]
    Setup(#[source] std::io::Error),
    #[error("receiving the pty master from libcontainer: {0}")]
    Console(#[source] std::io::Error),
}
