//! The IO port: one vsock connection per stdio stream.
//!
//! The host connects, sends a [`StreamHeader`] (read with a deadline; its size is bounded by
//! the protocol), and reads one status byte. On `STATUS_OK` the stream waits in the
//! [`StreamRegistry`] until its process claims it; on any other status the agent closes it.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::io_stream::{
    ReadError, STATUS_ALREADY_ATTACHED, STATUS_BAD_HEADER, STATUS_OK, STATUS_REGISTRY_FULL,
    StreamHeader,
};
use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_vsock::{VsockListener, VsockStream};

use super::registry::{Refused, RegistryError, StreamKey, StreamRegistry};

/// How long a host may take to send a stream header after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream the agent can write one byte to without waiting: used to acknowledge an attach
/// while the registry is locked.
pub trait WriteNow {
    fn write_now(&mut self, byte: u8) -> io::Result<()>;
}

impl WriteNow for VsockStream {
    fn write_now(&mut self, byte: u8) -> io::Result<()> {
        // `Write` on a tokio-vsock stream is a plain non-blocking write; a fresh connection
        // always has room for one byte.
        match Write::write(self, &[byte])? {
            1 => Ok(()),
            _ => Err(io::ErrorKind::WriteZero.into()),
        }
    }
}

impl WriteNow for tokio::net::UnixStream {
    fn write_now(&mut self, byte: u8) -> io::Result<()> {
        match self.try_write(&[byte])? {
            1 => Ok(()),
            _ => Err(io::ErrorKind::WriteZero.into()),
        }
    }
}

/// Accepts stream connections forever.
pub async fn serve(
    listener: VsockListener,
    registry: Arc<StreamRegistry<VsockStream>>,
    log: Logger,
) {
    crate::server::accept_each(listener, "io", log.clone(), |stream| {
        let registry = Arc::clone(&registry);
        let log = log.clone();
        async move {
            attach(stream, &registry, &log).await;
        }
    })
    .await;
}

/// What became of one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached,
    /// The header was malformed; the host got `STATUS_BAD_HEADER`.
    BadHeader,
    /// The host sent no complete header in time, or disconnected.
    NoHeader,
    /// The registry refused the stream; the host got this status byte.
    Refused(u8),
}

/// Reads the header of one connection and registers the stream.
pub async fn attach<S>(mut stream: S, registry: &StreamRegistry<S>, log: &Logger) -> AttachOutcome
where
    S: AsyncRead + AsyncWrite + WriteNow + Unpin,
{
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, StreamHeader::read_from(&mut stream)).await {
            Ok(Ok(header)) => header,
            Ok(Err(ReadError::Invalid(e))) => {
                debug!(log, "rejecting IO stream"; "error" => %e);
                let _ = stream.write_all(&[STATUS_BAD_HEADER]).await;
                return AttachOutcome::BadHeader;
            }
            Ok(Err(ReadError::Io(e))) => {
                debug!(log, "IO stream closed before its header"; "error" => %e);
                return AttachOutcome::NoHeader;
            }
            Err(_) => {
                debug!(log, "IO stream sent no header in time");
                return AttachOutcome::NoHeader;
            }
        };
    let key = StreamKey::from(header);
    debug!(log, "IO stream attached"; "stream" => %key);
    match registry.attach(key, stream, Instant::now(), |s| s.write_now(STATUS_OK)) {
        Ok(()) => AttachOutcome::Attached,
        Err(Refused { error, mut stream }) => {
            warn!(log, "refusing IO stream"; "error" => %error);
            let status = match error {
                RegistryError::AlreadyAttached(_) => STATUS_ALREADY_ATTACHED,
                RegistryError::Full => STATUS_REGISTRY_FULL,
                // The connection is broken; any status is moot.
                RegistryError::Acknowledge { .. } | RegistryError::NotAttached(_) => {
                    return AttachOutcome::NoHeader;
                }
            };
            let _ = stream.write_all(&[status]).await;
            AttachOutcome::Refused(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use husk_protocol::io_stream::{MAGIC, StreamKind};
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    use super::*;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn header(kind: StreamKind) -> Vec<u8> {
        StreamHeader {
            kind,
            container_id: "c".into(),
            exec_id: String::new(),
        }
        .encode()
        .unwrap()
    }

    async fn status_byte(host: &mut UnixStream) -> u8 {
        let mut b = [0u8; 1];
        host.read_exact(&mut b).await.unwrap();
        b[0]
    }

    #[tokio::test]
    async fn attaches_and_acknowledges() {
        let registry = StreamRegistry::default();
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(&header(StreamKind::Stdout)).await.unwrap();
        assert_eq!(
            attach(guest, &registry, &log()).await,
            AttachOutcome::Attached
        );
        assert_eq!(status_byte(&mut host).await, STATUS_OK);
        assert!(
            registry
                .claim("c", "", &[StreamKind::Stdout], Instant::now())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn rejects_bad_headers_and_duplicates() {
        let registry = StreamRegistry::default();
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(b"NOTHUSK!\x01\x00\x01c\x00\x00")
            .await
            .unwrap();
        assert_eq!(
            attach(guest, &registry, &log()).await,
            AttachOutcome::BadHeader
        );
        assert_eq!(status_byte(&mut host).await, STATUS_BAD_HEADER);

        for expected in [STATUS_OK, STATUS_ALREADY_ATTACHED] {
            let (mut host, guest) = UnixStream::pair().unwrap();
            host.write_all(&header(StreamKind::Stdin)).await.unwrap();
            attach(guest, &registry, &log()).await;
            assert_eq!(status_byte(&mut host).await, expected);
        }
    }

    #[tokio::test]
    async fn reports_a_full_registry() {
        let registry = StreamRegistry::new(1, Duration::from_secs(60));
        for (kind, expected) in [
            (StreamKind::Stdout, STATUS_OK),
            (StreamKind::Stderr, STATUS_REGISTRY_FULL),
        ] {
            let (mut host, guest) = UnixStream::pair().unwrap();
            host.write_all(&header(kind)).await.unwrap();
            attach(guest, &registry, &log()).await;
            assert_eq!(status_byte(&mut host).await, expected);
        }
    }

    #[tokio::test]
    async fn truncated_header_gets_no_status() {
        let registry = StreamRegistry::default();
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(&MAGIC[..4]).await.unwrap();
        drop(host.shutdown().await);
        assert_eq!(
            attach(guest, &registry, &log()).await,
            AttachOutcome::NoHeader
        );
        assert!(registry.is_empty(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_host_times_out() {
        let registry = StreamRegistry::default();
        let (_host, guest) = UnixStream::pair().unwrap();
        assert_eq!(
            attach(guest, &registry, &log()).await,
            AttachOutcome::NoHeader
        );
    }
}
