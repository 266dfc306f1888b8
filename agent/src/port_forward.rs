//! The forwarding port (CRI PortForward): one vsock connection per forwarded TCP connection.
//!
//! The host sends a [`ForwardHeader`] naming a port; the agent connects to that port on the
//! guest's loopback, so a server bound only to `127.0.0.1` in the pod is reached as it is with
//! runc, answers one status byte and then copies bytes both ways until both sides are done.
//! A client that dialled IPv4 reaches a server listening on `::1` only (and the other way
//! round) when the dialled family refuses: containerd tries `tcp4` first.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::port_forward::{
    Family, ForwardHeader, HEADER_LEN, MAX_FORWARDS, STATUS_BAD_HEADER, STATUS_BUSY,
    STATUS_CONNECT_FAILED, STATUS_OK, STATUS_REFUSED,
};
use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_vsock::VsockListener;

/// How long the host may take to send the header after connecting.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to the guest port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts forwarding connections forever.
pub async fn serve(listener: VsockListener, log: Logger) {
    let slots = Arc::new(Semaphore::new(MAX_FORWARDS));
    crate::server::accept_each(listener, "forward", log.clone(), |stream| {
        let slot = Arc::clone(&slots).try_acquire_owned().ok();
        let log = log.clone();
        async move {
            forward(stream, slot.is_some(), &log).await;
            drop(slot);
        }
    })
    .await;
}

/// What became of one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Bytes were carried until both directions ended.
    Carried,
    /// The host answered with this status; nothing was carried.
    Refused(u8),
    /// The host sent no complete header in time, or went away.
    NoHeader,
}

/// Serves one host connection: header, connect, status, copy.
pub async fn forward<S>(mut host: S, admitted: bool, log: &Logger) -> ForwardOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = [0u8; HEADER_LEN];
    match tokio::time::timeout(HEADER_TIMEOUT, host.read_exact(&mut bytes)).await {
        Ok(Ok(_)) => {}
        _ => return ForwardOutcome::NoHeader,
    }
    let refuse = |status| ForwardOutcome::Refused(status);
    let header = match ForwardHeader::decode(&bytes) {
        Ok(h) => h,
        Err(e) => {
            warn!(log, "bad forwarding header"; "error" => %e);
            let _ = host.write_all(&[STATUS_BAD_HEADER]).await;
            return refuse(STATUS_BAD_HEADER);
        }
    };
    if !admitted {
        let _ = host.write_all(&[STATUS_BUSY]).await;
        return refuse(STATUS_BUSY);
    }
    let mut guest = match connect_loopback(header).await {
        Ok(s) => s,
        Err(e) => {
            debug!(log, "forwarded port not reachable"; "port" => header.port, "error" => %e);
            let status = if e.kind() == io::ErrorKind::ConnectionRefused {
                STATUS_REFUSED
            } else {
                STATUS_CONNECT_FAILED
            };
            let _ = host.write_all(&[status]).await;
            return refuse(status);
        }
    };
    if host.write_all(&[STATUS_OK]).await.is_err() {
        return ForwardOutcome::NoHeader;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut host, &mut guest).await {
        debug!(log, "forwarded connection ended with an error"; "port" => header.port, "error" => %e);
    }
    ForwardOutcome::Carried
}

/// Connects to the port on the loopback address of the dialled family, then the other's.
async fn connect_loopback(header: ForwardHeader) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, header.port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, header.port));
    let (first, second) = match header.family {
        Family::V4 => (v4, v6),
        Family::V6 => (v6, v4),
    };
    match connect(first).await {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            connect(second).await.map_err(|_| e)
        }
        other => other,
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))?
}

#[cfg(test)]
mod tests;
