//! Process stdio: host streams on the IO port ([`attach`], [`registry`]), pipes or a pty on
//! the process side, and the pumps in between ([`pump`], [`pty`]).
//!
//! Without a terminal each attached stream gets a pipe; the process's end goes to the helper
//! that creates the process, and the agent pumps the other end. With a terminal, libcontainer
//! creates the pty inside the container and hands the master back; stdout then carries the
//! terminal's output and stdin feeds it. A stream the request does not name is /dev/null.

pub mod attach;
pub mod pty;
pub mod pump;
pub mod registry;

use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use husk_protocol::io_stream::StreamKind;
use nix::fcntl::OFlag;
use slog::Logger;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

pub use registry::{ClaimedStreams, RegistryError, StreamKey, StreamRegistry};

use self::pty::{PtyError, PtyMaster};
use self::pump::{pump_input, pump_output};

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("a process with a terminal has no separate stderr; do not request a stderr stream")]
    StderrWithTerminal,
    #[error("creating a pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error("handing a pipe to the reactor: {0}")]
    PipeRegister(#[source] std::io::Error),
    #[error("the terminal was requested but no pty master came back")]
    MissingPtyMaster,
    #[error("the process has no terminal")]
    NoTerminal,
    #[error(transparent)]
    Pty(#[from] PtyError),
}

/// Which streams a process has (the protocol's `Stdio`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

impl StdioRequest {
    /// The streams to claim from the registry.
    pub fn kinds(&self) -> Result<Vec<StreamKind>, StdioError> {
        if self.terminal && self.stderr {
            return Err(StdioError::StderrWithTerminal);
        }
        let wanted = [
            (self.stdin, StreamKind::Stdin),
            (self.stdout, StreamKind::Stdout),
            (self.stderr, StreamKind::Stderr),
        ];
        Ok(wanted
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, k)| k)
            .collect())
    }
}

/// The process's ends of its stdio pipes (`None`: /dev/null, or the pty with a terminal).
#[derive(Debug, Default)]
pub struct ContainerStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The agent's side, ready to pump once the process exists.
pub struct HostStdio<S> {
    streams: ClaimedStreams<S>,
    stdin_writer: Option<OwnedFd>,
    stdout_reader: Option<OwnedFd>,
    stderr_reader: Option<OwnedFd>,
    terminal: bool,
}

/// Creates the pipes for the claimed streams.
pub fn prepare<S>(
    streams: ClaimedStreams<S>,
    terminal: bool,
) -> Result<(ContainerStdio, HostStdio<S>), StdioError> {
    let mut container = ContainerStdio::default();
    let mut host = HostStdio {
        streams,
        stdin_writer: None,
        stdout_reader: None,
        stderr_reader: None,
        terminal,
    };
    if !terminal {
        if host.streams.stdin.is_some() {
            let (r, w) = new_pipe()?;
            container.stdin = Some(r);
            host.stdin_writer = Some(w);
        }
        if host.streams.stdout.is_some() {
            let (r, w) = new_pipe()?;
            container.stdout = Some(w);
            host.stdout_reader = Some(r);
        }
        if host.streams.stderr.is_some() {
            let (r, w) = new_pipe()?;
            container.stderr = Some(w);
            host.stderr_reader = Some(r);
        }
    }
    Ok((container, host))
}

fn new_pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

impl<S> HostStdio<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Starts the pumps. `pty_master` is what the helper returned for a terminal process.
    pub fn start(self, pty_master: Option<OwnedFd>, log: &Logger) -> Result<ProcessIo, StdioError> {
        let (close_tx, close_rx) = oneshot::channel();
        let streams = self.streams;
        if self.terminal {
            let master = pty_master.ok_or(StdioError::MissingPtyMaster)?;
            // The terminal must always be drained, or the process blocks on a full pty.
            let reader = PtyMaster::duplicate(&master)?;
            tokio::spawn(pump_output(
                reader,
                streams.stdout,
                log.new(slog::o!("stream" => "tty")),
            ));
            if let Some(stdin) = streams.stdin {
                let writer = PtyMaster::duplicate(&master)?;
                tokio::spawn(pump_input(
                    stdin,
                    writer,
                    close_rx,
                    log.new(slog::o!("stream" => "stdin")),
                ));
            }
            return Ok(ProcessIo::new(close_tx, Some(master)));
        }
        let outputs = [
            (self.stdout_reader, streams.stdout, "stdout"),
            (self.stderr_reader, streams.stderr, "stderr"),
        ];
        for (reader, stream, name) in outputs {
            if let (Some(reader), Some(stream)) = (reader, stream) {
                let reader =
                    pipe::Receiver::from_owned_fd(reader).map_err(StdioError::PipeRegister)?;
                tokio::spawn(pump_output(
                    reader,
                    Some(stream),
                    log.new(slog::o!("stream" => name)),
                ));
            }
        }
        if let (Some(writer), Some(stream)) = (self.stdin_writer, streams.stdin) {
            let writer = pipe::Sender::from_owned_fd(writer).map_err(StdioError::PipeRegister)?;
            tokio::spawn(pump_input(
                stream,
                writer,
                close_rx,
                log.new(slog::o!("stream" => "stdin")),
            ));
        }
        Ok(ProcessIo::new(close_tx, None))
    }
}

/// Controls of a running process's stdio.
pub struct ProcessIo {
    close_stdin: Mutex<Option<oneshot::Sender<()>>>,
    pty_master: Option<OwnedFd>,
}

impl ProcessIo {
    fn new(close_stdin: oneshot::Sender<()>, pty_master: Option<OwnedFd>) -> Self {
        Self {
            close_stdin: Mutex::new(Some(close_stdin)),
            pty_master,
        }
    }

    /// Stdio of a process that has none (nothing attached, no terminal).
    pub fn detached() -> Self {
        Self {
            close_stdin: Mutex::new(None),
            pty_master: None,
        }
    }

    /// Closes the process's stdin once what the host already sent is delivered; idempotent.
    pub fn close_stdin(&self) {
        let sender = self
            .close_stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    pub fn has_terminal(&self) -> bool {
        self.pty_master.is_some()
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let master = self.pty_master.as_ref().ok_or(StdioError::NoTerminal)?;
        Ok(pty::resize(master, rows, cols)?)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn kinds_follow_the_request() {
        let req = StdioRequest {
            stdin: true,
            stdout: true,
            stderr: false,
            terminal: false,
        };
        assert_eq!(
            req.kinds().unwrap(),
            vec![StreamKind::Stdin, StreamKind::Stdout]
        );
        assert!(StdioRequest::default().kinds().unwrap().is_empty());
        let tty = StdioRequest {
            stdout: true,
            stderr: true,
            terminal: true,
            ..Default::default()
        };
        assert!(matches!(tty.kinds(), Err(StdioError::StderrWithTerminal)));
    }

    #[tokio::test]
    async fn pipes_connect_process_and_host_streams() {
        let (mut host_out, guest_out) = UnixStream::pair().unwrap();
        let (mut host_in, guest_in) = UnixStream::pair().unwrap();
        let claimed = ClaimedStreams {
            stdin: Some(guest_in),
            stdout: Some(guest_out),
            stderr: None,
        };
        let (container, host) = prepare(claimed, false).unwrap();
        assert!(container.stderr.is_none());
        let io = host.start(None, &log()).unwrap();
        assert!(!io.has_terminal());
        assert!(matches!(io.resize(1, 1), Err(StdioError::NoTerminal)));

        let (mut proc_stdout, proc_stdin) = (
            std::fs::File::from(container.stdout.unwrap()),
            std::fs::File::from(container.stdin.unwrap()),
        );
        proc_stdout.write_all(b"to host").unwrap();
        drop(proc_stdout);
        let mut out = Vec::new();
        host_out.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"to host");

        host_in.write_all(b"to process").await.unwrap();
        host_in.shutdown().await.unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut stdin = proc_stdin;
            stdin.read_to_end(&mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(got, b"to process");
        io.close_stdin(); // after EOF: harmless
    }

    #[tokio::test]
    async fn terminal_needs_the_master() {
        let (container, host) = prepare(ClaimedStreams::<UnixStream>::default(), true).unwrap();
        assert!(container.stdin.is_none() && container.stdout.is_none());
        assert!(matches!(
            host.start(None, &log()),
            Err(StdioError::MissingPtyMaster)
        ));
    }
}
