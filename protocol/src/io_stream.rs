//! Header that opens a stdio stream on [`crate::IO_VSOCK_PORT`].
//!
//! The host connects, writes one header naming the process and stream, and reads one status
//! byte. After [`STATUS_OK`] the connection carries the raw bytes of that stream: host->guest
//! for stdin, guest->host for stdout/stderr, with end of stream marked by a shutdown of the
//! writing side.
//!
//! Layout: `MAGIC` (8 bytes) | kind (u8) | container id length (u16 BE) | container id |
//! exec id length (u16 BE) | exec id. IDs are UTF-8, at most [`MAX_ID_LEN`] bytes.

use thiserror::Error;

/// Identifies the stream protocol and its version.
pub const MAGIC: &[u8; 8] = b"HUSKIO\x00\x01";
/// containerd IDs are at most 76 bytes; leave room, but keep headers small and bounded.
pub const MAX_ID_LEN: usize = 256;
/// The largest header a peer may send; readers never buffer more than this.
pub const MAX_HEADER_LEN: usize = MAGIC.len() + 1 + 2 * (2 + MAX_ID_LEN);
/// Status byte: the stream is attached.
pub const STATUS_OK: u8 = 0;
/// Status byte: the header was malformed.
pub const STATUS_BAD_HEADER: u8 = 1;
/// Status byte: the same stream of the same process is already attached.
pub const STATUS_ALREADY_ATTACHED: u8 = 2;
/// Status byte: too many streams are attached but not yet claimed by a process; retry later.
pub const STATUS_REGISTRY_FULL: u8 = 3;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IoStreamError {
    #[error("stream header does not start with the husk IO magic")]
    BadMagic,
    #[error("unknown stdio stream kind {0}")]
    UnknownKind(u8),
    #[error("{what} is {len} bytes; at most {MAX_ID_LEN} are allowed")]
    IdTooLong { what: &'static str, len: usize },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("container id is empty")]
    EmptyContainerId,
}

/// Which stdio stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

impl TryFrom<u8> for StreamKind {
    type Error = IoStreamError;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Self::Stdin),
            1 => Ok(Self::Stdout),
            2 => Ok(Self::Stderr),
            other => Err(IoStreamError::UnknownKind(other)),
        }
    }
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub container_id: String,
    /// Empty for a container's init process.
    pub exec_id: String,
}

impl StreamHeader {
    pub fn encode(&self) -> Result<Vec<u8>, IoStreamError> {
        check_id("container id", &self.container_id)?;
        check_id("exec id", &self.exec_id)?;
        if self.container_id.is_empty() {
            return Err(IoStreamError::EmptyContainerId);
        }
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(self.kind as u8);
        for id in [&self.container_id, &self.exec_id] {
            // check_id bounded the length to MAX_ID_LEN, which fits in u16.
            let len = u16::try_from(id.len()).map_err(|_| IoStreamError::IdTooLong {
                what: "id",
                len: id.len(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        Ok(out)
    }

    /// Parses a header from an async reader, reading exactly the header's bytes.
    pub async fn read_from<R: tokio_io::AsyncRead + Unpin>(r: &mut R) -> Result<Self, ReadError> {
        use tokio_io::AsyncReadExt;
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(IoStreamError::BadMagic.into());
        }
        let kind = StreamKind::try_from(r.read_u8().await?)?;
        let container_id = read_id(r, "container id").await?;
        let exec_id = read_id(r, "exec id").await?;
        if container_id.is_empty() {
            return Err(IoStreamError::EmptyContainerId.into());
        }
        Ok(Self {
            kind,
            container_id,
            exec_id,
        })
    }
}

/// Reading a header failed: the connection broke or the header is malformed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("reading stream header: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Invalid(#[from] IoStreamError),
}

fn check_id(what: &'static str, id: &str) -> Result<(), IoStreamError> {
    if id.len() > MAX_ID_LEN {
        return Err(IoStreamError::IdTooLong {
            what,
            len: id.len(),
        });
    }
    Ok(())
}

async fn read_id<R: tokio_io::AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<String, ReadError> {
    use tokio_io::AsyncReadExt;
    let len = usize::from(r.read_u16().await?);
    if len > MAX_ID_LEN {
        return Err(IoStreamError::IdTooLong { what, len }.into());
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| IoStreamError::NotUtf8(what).into())
}

/// tokio's IO traits under a local name, so the module reads as protocol code.
mod tokio_io {
    pub use tokio::io::{AsyncRead, AsyncReadExt};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: StreamKind, cid: &str, eid: &str) -> StreamHeader {
        StreamHeader {
            kind,
            container_id: cid.into(),
            exec_id: eid.into(),
        }
    }

    #[tokio::test]
    async fn round_trips() {
        for h in [
            header(StreamKind::Stdin, "c1", ""),
            header(StreamKind::Stderr, "c", "exec-1"),
        ] {
            let bytes = h.encode().unwrap();
            assert!(bytes.len() <= MAX_HEADER_LEN);
            let parsed = StreamHeader::read_from(&mut bytes.as_slice())
                .await
                .unwrap();
            assert_eq!(parsed, h);
        }
    }

    #[tokio::test]
    async fn rejects_bad_magic_kind_and_lengths() {
        let mut bytes = header(StreamKind::Stdout, "c", "").encode().unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            StreamHeader::read_from(&mut bytes.as_slice()).await,
            Err(ReadError::Invalid(IoStreamError::BadMagic))
        ));

        let mut bytes = header(StreamKind::Stdout, "c", "").encode().unwrap();
        bytes[MAGIC.len()] = 9;
        assert!(matches!(
            StreamHeader::read_from(&mut bytes.as_slice()).await,
            Err(ReadError::Invalid(IoStreamError::UnknownKind(9)))
        ));

        let mut bytes = MAGIC.to_vec();
        bytes.push(1);
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            StreamHeader::read_from(&mut bytes.as_slice()).await,
            Err(ReadError::Invalid(IoStreamError::IdTooLong { .. }))
        ));
    }

    #[tokio::test]
    async fn truncated_header_is_an_io_error() {
        let bytes = header(StreamKind::Stdout, "container", "")
            .encode()
            .unwrap();
        let short = &bytes[..bytes.len() - 2];
        assert!(matches!(
            StreamHeader::read_from(&mut &short[..]).await,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn encode_rejects_long_and_empty_ids() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(header(StreamKind::Stdin, &long, "").encode().is_err());
        assert_eq!(
            header(StreamKind::Stdin, "", "").encode(),
            Err(IoStreamError::EmptyContainerId)
        );
    }

    #[tokio::test]
    async fn rejects_non_utf8_id() {
        let mut bytes = MAGIC.to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&2u16.to_be_bytes());
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(&0u16.to_be_bytes());
        assert!(matches!(
            StreamHeader::read_from(&mut bytes.as_slice()).await,
            Err(ReadError::Invalid(IoStreamError::NotUtf8(_)))
        ));
    }
}
