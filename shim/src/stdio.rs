//! Process stdio between containerd's fifos and the agent's per-stream vsock connections.
//!
//! Output: stream → fifo until the agent closes the stream (the process side hit EOF); the
//! caller waits for that before it reports the exit, so nothing the process wrote is lost.
//! Like the runc shim, the shim holds a read end of each output fifo of its own, which it
//! never reads, until the process is deleted: when containerd goes away (a restart), writes
//! do not fail, the fifo keeps what the process writes meanwhile (once it is full the
//! process waits, as under runc), and the restarted containerd, opening the fifo again,
//! gets all of it — also what was written before an exit it missed. Input: fifo → stream until the client closes its end or sends CloseIO
//! (which first delivers what is still in the fifo), then the stream is half-closed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use husk_protocol::agent::Stdio;
use husk_protocol::io_stream::{StreamHeader, StreamKind};
use slog::{Logger, debug};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentError};

const COPY_BUFFER: usize = 64 * 1024;
/// How long CloseIO waits for input still in the fifo to reach the guest. A process that
/// never reads its stdin (or a guest that stops taking data) must not hang the call:
/// after this the rest is dropped and the stream is closed.
pub const STDIN_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("opening fifo {path:?}: {source}")]
    Fifo {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The fifo paths containerd gave for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// Which streams the agent should expect; with a terminal, stderr is part of stdout.
    pub fn for_agent(&self) -> Stdio {
        let mut s = Stdio::new();
        s.stdin = !self.stdin.is_empty();
        s.stdout = !self.stdout.is_empty();
        s.stderr = !self.stderr.is_empty() && !self.terminal;
        s.terminal = self.terminal;
        s
    }
}

/// Copies one process's stdin fifo into its stream until closed.
pub struct StdinPump {
    close: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl StdinPump {
    /// Delivers what is left in the stdin fifo within `within`, then ends the stream.
    /// Returns false if the input could not all be delivered in time (it is dropped).
    pub async fn close(mut self, within: std::time::Duration) -> bool {
        self.close.notify_one();
        match self.task.take() {
            Some(mut task) => match tokio::time::timeout(within, &mut task).await {
                Ok(_) => true,
                Err(_) => {
                    task.abort();
                    false
                }
            },
            None => true,
        }
    }
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Copies a process's stdout/stderr streams into their fifos.
#[derive(Default)]
pub struct OutputPumps {
    tasks: Vec<JoinHandle<()>>,
}

impl OutputPumps {
    /// Resolves once every output stream has been copied to its fifo and closed.
    pub async fn done(&mut self) {
        for task in self.tasks.iter_mut() {
            let _ = task.await;
        }
        self.tasks.clear();
    }
}

impl Drop for OutputPumps {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The pumps of one process.
pub struct ProcessIo {
    pub stdin: Option<StdinPump>,
    pub outputs: OutputPumps,
    /// The shim's own read ends of the output fifos: kept until the process is deleted.
    pub held_readers: Vec<File>,
}

impl ProcessIo {
    /// Opens the fifos and attaches every stream the agent will expect. Must complete
    /// before the process is created in the guest.
    pub async fn attach(
        agent: &dyn Agent,
        container_id: &str,
        exec_id: &str,
        paths: &StdioPaths,
        log: &Logger,
    ) -> Result<Self, StdioError> {
        let want = paths.for_agent();
        let header = |kind| StreamHeader {
            kind,
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let mut io = ProcessIo {
            stdin: None,
            outputs: OutputPumps::default(),
            held_readers: Vec::new(),
        };
        if want.stdin {
            let fifo = open_input_fifo(&paths.stdin)?;
            let stream = agent.open_stream(&header(StreamKind::Stdin)).await?;
            let close = Arc::new(Notify::new());
            let task = tokio::spawn(pump_input(fifo, stream, close.clone(), log.clone()));
            io.stdin = Some(StdinPump {
                close,
                task: Some(task),
            });
        }
        for (enabled, path, kind) in [
            (want.stdout, &paths.stdout, StreamKind::Stdout),
            (want.stderr, &paths.stderr, StreamKind::Stderr),
        ] {
            if !enabled {
                continue;
            }
            let (fifo, held_reader) = open_output_fifo(path)?;
            io.held_readers.push(held_reader);
            let stream = agent.open_stream(&header(kind)).await?;
            let log = log.new(slog::o!("stream" => format!("{kind:?}")));
            io.outputs
                .tasks
                .push(tokio::spawn(pump_output(stream, fifo, log)));
        }
        Ok(io)
    }
}

fn fifo_err(path: &str) -> impl FnOnce(std::io::Error) -> StdioError + '_ {
    move |source| StdioError::Fifo {
        path: path.to_string(),
        source,
    }
}

/// Read-only and non-blocking: the open never waits for the client, and Linux reports
/// end-of-file on a fifo only after a writer has come and gone since it was opened, so the
/// input ends when the client closes its end (or at CloseIO, whichever comes first) and
/// not before the client arrives.
fn open_input_fifo(path: &str) -> Result<pipe::Receiver, StdioError> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(fifo_err(path))
}

/// The write end, and the read end the shim holds (see the module docs). The read end is
/// opened first, so the write-only open never fails (ENXIO) however slow containerd is.
fn open_output_fifo(path: &str) -> Result<(pipe::Sender, File), StdioError> {
    let held_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(Path::new(path))
        .map_err(fifo_err(path))?;
    let writer = pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(fifo_err(path))?;
    Ok((writer, held_reader))
}

async fn pump_output(mut stream: UnixStream, mut fifo: pipe::Sender, log: Logger) {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut reader_gone = false;
    let mut total: u64 = 0;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                debug!(log, "output stream ended with an error"; "error" => %e);
                break;
            }
        };
        total += n as u64;
        if !reader_gone {
            if let Err(e) = fifo.write_all(&buf[..n]).await {
                // Not a missing reader (the shim holds one): the fifo itself failed. Keep
                // draining so the guest process is not blocked by it.
                debug!(log, "writing the fifo failed; discarding further output"; "error" => %e);
                reader_gone = true;
            }
        }
    }
    debug!(log, "output stream complete"; "bytes" => total);
}

async fn pump_input(
    mut fifo: pipe::Receiver,
    mut stream: UnixStream,
    close: Arc<Notify>,
    log: Logger,
) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        tokio::select! {
            r = fifo.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => if stream.write_all(&buf[..n]).await.is_err() { return },
                Err(e) => { debug!(log, "stdin fifo read failed"; "error" => %e); break }
            },
            _ = close.notified() => {
                // Deliver what the client wrote before it asked to close. A plain non-blocking
                // read: tokio's try_read would trust stale readiness and report WouldBlock.
                loop {
                    match nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if stream.write_all(&buf[..n]).await.is_err() { return },
                    }
                }
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::time::Duration;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn terminal_folds_stderr_into_stdout() {
        let p = StdioPaths {
            stdin: "i".into(),
            stdout: "o".into(),
            stderr: "e".into(),
            terminal: true,
        };
        let s = p.for_agent();
        assert!(s.stdin && s.stdout && !s.stderr && s.terminal);
        let s = StdioPaths::default().for_agent();
        assert!(!s.stdin && !s.stdout && !s.stderr);
    }

    #[tokio::test]
    async fn output_is_copied_completely_then_closed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let mut reader = pipe::OpenOptions::new().open_receiver(&path).unwrap();
        let (fifo, _held_reader) = open_output_fifo(path.to_str().unwrap()).unwrap();
        let (mut guest, host) = UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_output(host, fifo, log()));
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            guest.write_all(&data).await.unwrap();
            guest.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        pump.await.unwrap();
        assert_eq!(got, expected);
    }

    /// containerd restarting: its reader goes, output written meanwhile (even up to the
    /// process's end) waits in the fifo, and the next reader gets it, with nothing lost.
    #[tokio::test]
    async fn output_written_while_the_reader_is_away_reaches_the_next_reader() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let mut first = pipe::OpenOptions::new().open_receiver(&path).unwrap();
        let (fifo, held_reader) = open_output_fifo(path.to_str().unwrap()).unwrap();
        let (mut guest, host) = UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_output(host, fifo, log()));
        guest.write_all(b"before ").await.unwrap();
        let mut got = [0u8; 7];
        first.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"before ");
        drop(first);
        guest.write_all(b"while away").await.unwrap();
        guest.shutdown().await.unwrap();
        pump.await.unwrap();
        // (A plain non-blocking read: no writer is left to wake an async one.)
        let mut next = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        drop(held_reader);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut next, &mut rest).unwrap();
        assert_eq!(rest, b"while away");
    }

    #[tokio::test]
    async fn input_ends_when_the_writer_closes_not_before_it_arrives() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("in");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = open_input_fifo(path.to_str().unwrap()).unwrap();
        let (mut guest, host) = UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_input(fifo, host, Arc::new(Notify::new()), log()));
        // No writer yet: the stream must stay open.
        let mut byte = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(200), guest.read(&mut byte))
                .await;
        assert!(
            early.is_err(),
            "input ended before any writer arrived: {early:?}"
        );
        {
            let mut w = pipe::OpenOptions::new().open_sender(&path).unwrap();
            w.write_all(b"all of it").await.unwrap();
        }
        let mut got = Vec::new();
        guest.read_to_end(&mut got).await.unwrap();
        pump.await.unwrap();
        assert_eq!(got, b"all of it");
    }

    #[tokio::test]
    async fn close_delivers_pending_input_then_eof() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("in");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = open_input_fifo(path.to_str().unwrap()).unwrap();
        let (mut guest, host) = UnixStream::pair().unwrap();
        let close = Arc::new(Notify::new());
        let pump = tokio::spawn(pump_input(fifo, host, close.clone(), log()));
        {
            let mut w = pipe::OpenOptions::new().open_sender(&path).unwrap();
            w.write_all(b"hello stdin").await.unwrap();
        }
        close.notify_one();
        let mut got = Vec::new();
        guest.read_to_end(&mut got).await.unwrap();
        pump.await.unwrap();
        assert_eq!(got, b"hello stdin");
    }

    /// A guest that never reads its stdin cannot hang CloseIO.
    #[tokio::test]
    async fn close_is_bounded_when_the_guest_does_not_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("in");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = open_input_fifo(path.to_str().unwrap()).unwrap();
        let (guest, host) = UnixStream::pair().unwrap();
        let close = Arc::new(Notify::new());
        let pump = StdinPump {
            close: close.clone(),
            task: Some(tokio::spawn(pump_input(fifo, host, close, log()))),
        };
        let mut w = pipe::OpenOptions::new().open_sender(&path).unwrap();
        // More than the socket buffers hold: the pump blocks on the silent guest.
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            if tokio::time::timeout(Duration::from_millis(50), w.write_all(&chunk))
                .await
                .is_err()
            {
                break;
            }
        }
        let started = std::time::Instant::now();
        assert!(!pump.close(Duration::from_millis(300)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(guest);
    }
}
