//! The host side of hybrid vsock (Firecracker semantics): the listening Unix socket, the
//! `CONNECT <port>\n` handshake of host clients and the `<uds_path>_<port>` sockets that
//! guest-initiated connections are forwarded to.

use std::ffi::OsString;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// Longest accepted handshake line, newline included. `CONNECT 4294967295\n` is 19 bytes; the
/// slack tolerates a `\r`, anything longer is not a CONNECT line and the client is dropped.
pub const MAX_CONNECT_LINE: usize = 32;

const CONNECT_PREFIX: &[u8] = b"CONNECT ";
/// Digits of `u32::MAX`.
const MAX_PORT_DIGITS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum HybridSocketError {
    #[error("cannot bind the hybrid vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot make the hybrid vsock socket non-blocking: {0}")]
    NonBlocking(io::Error),
    #[error("client closed before sending a complete CONNECT line")]
    Eof,
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("not a CONNECT line")]
    Malformed,
    #[error("CONNECT port is not a 32-bit decimal number")]
    BadPort,
    #[error("reading the CONNECT line: {0}")]
    Read(io::Error),
    #[error("forward socket path for port {port} is invalid: {source}")]
    ForwardPath { port: u32, source: nix::Error },
    #[error("cannot connect to {path}: {source}")]
    Forward { path: PathBuf, source: io::Error },
}

/// The listening hybrid socket; removes its file when dropped (it created it), unless told
/// to leave that to its owner.
#[derive(Debug)]
pub struct HybridListener {
    listener: UnixListener,
    path: PathBuf,
    remove_on_drop: bool,
}

impl HybridListener {
    /// Binds `path`; fails if anything already exists there (never steals another VM's socket).
    pub fn bind(path: &Path) -> Result<Self, HybridSocketError> {
        let listener = UnixListener::bind(path).map_err(|source| HybridSocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let this = Self {
            listener,
            path: path.to_owned(),
            remove_on_drop: true,
        };
        this.listener
            .set_nonblocking(true)
            .map_err(HybridSocketError::NonBlocking)?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file stays when the listener goes: a jailed process may not unlink (the shim
    /// removes it).
    pub fn leave_file_on_drop(&mut self) {
        self.remove_on_drop = false;
    }

    /// Accepts one pending client (non-blocking); `Ok(None)` when none is waiting.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The client gave up between connect and accept: not our problem.
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for HybridListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for HybridListener {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Collects a client's `CONNECT <port>\n` line without ever consuming a byte past the newline,
/// so data the client pipelines after the line stays in the socket for the guest.
#[derive(Debug, Default)]
pub struct ConnectLineReader {
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
}

impl ConnectLineReader {
    /// Reads what is available. `Ok(Some(port))` once the line is complete and valid,
    /// `Ok(None)` if more bytes are needed, `Err` if the client must be dropped.
    pub fn poll(&mut self, stream: &UnixStream) -> Result<Option<u32>, HybridSocketError> {
        loop {
            let room = &mut self.line[self.len..];
            if room.is_empty() {
                return Err(HybridSocketError::TooLong);
            }
            let peeked = match socket::recv(stream.as_raw_fd(), room, MsgFlags::MSG_PEEK) {
                Ok(0) => return Err(HybridSocketError::Eof),
                Ok(n) => n,
                Err(nix::Error::EAGAIN) => return Ok(None),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(HybridSocketError::Read(e.into())),
            };
            let newline = room[..peeked].iter().position(|&b| b == b'\n');
            let wanted = newline.map_or(peeked, |i| i + 1);
            let got = read_some(stream, &mut self.line[self.len..self.len + wanted])?;
            self.len += got;
            if newline.is_some() && got == wanted {
                return parse_connect_line(&self.line[..self.len - 1]).map(Some);
            }
        }
    }
}

fn read_some(mut stream: &UnixStream, buf: &mut [u8]) -> Result<usize, HybridSocketError> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Err(HybridSocketError::Eof),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(HybridSocketError::Read(e)),
        }
    }
}

/// Parses `CONNECT <port>` (newline already stripped; a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HybridSocketError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .strip_prefix(CONNECT_PREFIX)
        .ok_or(HybridSocketError::Malformed)?;
    if digits.is_empty() || digits.len() > MAX_PORT_DIGITS || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(HybridSocketError::BadPort);
    }
    digits
        .iter()
        .try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or(HybridSocketError::BadPort)
}

/// The reply telling a host client its connection is open.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

/// Path a guest connection to host port `port` is forwarded to: `<uds_path>_<port>`.
pub fn forward_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to `<uds_path>_<port>` without blocking: a listener with a full backlog yields
/// `EAGAIN` (the guest gets RST) instead of stalling the device thread.
pub fn connect_forward(uds_path: &Path, port: u32) -> Result<UnixStream, HybridSocketError> {
    let path = forward_path(uds_path, port);
    let addr =
        UnixAddr::new(&path).map_err(|source| HybridSocketError::ForwardPath { port, source })?;
    let forward_err = |e: nix::Error| HybridSocketError::Forward {
        path: path.clone(),
        source: e.into(),
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(forward_err)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(forward_err)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_valid_connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024").unwrap(), 1024);
        assert_eq!(parse_connect_line(b"CONNECT 0").unwrap(), 0);
        assert_eq!(parse_connect_line(b"CONNECT 4294967295").unwrap(), u32::MAX);
        assert_eq!(parse_connect_line(b"CONNECT 52\r").unwrap(), 52);
    }

    #[test]
    fn rejects_malformed_connect_lines() {
        for bad in [
            &b""[..],
            b"C",
            b"CONNECT",
            b"CONNECT ",
            b"connect 1024",
            b"CONNECT  1024",
            b"CONNECT 1024 ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 0x10",
            b"CONNECT 4294967296",
            b"CONNECT 99999999999",
            b"CONNECT 12\0",
            b"LISTEN 1024",
        ] {
            assert!(parse_connect_line(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn reader_waits_for_a_line_split_across_writes() {
        let (mut client, server) = pair();
        let mut reader = ConnectLineReader::default();
        assert!(reader.poll(&server).unwrap().is_none());
        client.write_all(b"CONN").unwrap();
        assert!(reader.poll(&server).unwrap().is_none());
        client.write_all(b"ECT 10").unwrap();
        assert!(reader.poll(&server).unwrap().is_none());
        client.write_all(b"24\n").unwrap();
        assert_eq!(reader.poll(&server).unwrap(), Some(1024));
    }

    #[test]
    fn reader_leaves_pipelined_data_in_the_socket() {
        let (mut client, mut server) = pair();
        client.write_all(b"CONNECT 7\npayload").unwrap();
        let mut reader = ConnectLineReader::default();
        assert_eq!(reader.poll(&server).unwrap(), Some(7));
        let mut rest = [0u8; 16];
        let n = server.read(&mut rest).unwrap();
        assert_eq!(&rest[..n], b"payload");
    }

    #[test]
    fn reader_rejects_long_short_and_garbage_lines() {
        let (mut client, server) = pair();
        client.write_all(&[b'A'; MAX_CONNECT_LINE + 5]).unwrap();
        let err = ConnectLineReader::default().poll(&server).unwrap_err();
        assert!(matches!(err, HybridSocketError::TooLong), "{err}");

        let (mut client, server) = pair();
        client.write_all(b"CONNECT").unwrap();
        drop(client);
        let err = ConnectLineReader::default().poll(&server).unwrap_err();
        assert!(matches!(err, HybridSocketError::Eof), "{err}");

        let (mut client, server) = pair();
        client.write_all(b"CONNECT abc\n").unwrap();
        let err = ConnectLineReader::default().poll(&server).unwrap_err();
        assert!(matches!(err, HybridSocketError::BadPort), "{err}");

        let (mut client, server) = pair();
        client.write_all(b"\n").unwrap();
        let err = ConnectLineReader::default().poll(&server).unwrap_err();
        assert!(matches!(err, HybridSocketError::Malformed), "{err}");
    }

    #[test]
    fn listener_refuses_an_existing_path_and_removes_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = HybridListener::bind(&path).unwrap();
        assert!(HybridListener::bind(&path).is_err());
        assert!(listener.accept().unwrap().is_none());
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn forwards_to_port_suffixed_socket() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        assert_eq!(forward_path(&uds, 5000), dir.path().join("v.sock_5000"));
        assert!(connect_forward(&uds, 5000).is_err(), "nobody listens yet");
        let _l = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        connect_forward(&uds, 5000).unwrap();
    }
}
