//! Header that opens a forwarded connection on [`crate::FORWARD_VSOCK_PORT`] (CRI
//! PortForward).
//!
//! The host connects, writes one fixed-size header naming the guest loopback port, and reads
//! one status byte. The agent connects to that port on the guest's loopback; after
//! [`STATUS_OK`] the connection carries the raw bytes of the TCP stream in both directions,
//! each end of stream marked by a shutdown of the writing side.
//!
//! Layout: `MAGIC` (8 bytes) | address family (u8: 4 or 6) | port (u16 BE).

use thiserror::Error;

/// Identifies the forwarding protocol and its version.
pub const MAGIC: &[u8; 8] = b"HUSKPF\x00\x01";
/// Every header is exactly this long.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 2;
/// Forwarded connections one pod carries at once (shim and agent each enforce it).
pub const MAX_FORWARDS: usize = 1024;
/// Status byte: connected; the stream follows.
pub const STATUS_OK: u8 = 0;
/// Status byte: the header was malformed.
pub const STATUS_BAD_HEADER: u8 = 1;
/// Status byte: nothing listens on that port in the guest (connection refused).
pub const STATUS_REFUSED: u8 = 2;
/// Status byte: connecting failed otherwise, or took too long.
pub const STATUS_CONNECT_FAILED: u8 = 3;
/// Status byte: the agent carries too many forwarded connections already.
pub const STATUS_BUSY: u8 = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortForwardError {
    #[error("forward header does not start with the husk port-forward magic")]
    BadMagic,
    #[error("unknown address family {0} (4 or 6)")]
    UnknownFamily(u8),
    #[error("port 0 cannot be forwarded")]
    PortZero,
}

/// Which loopback address the connection is for: the one the client dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeader {
    pub family: Family,
    pub port: u16,
}

impl ForwardHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()] = self.family as u8;
        out[MAGIC.len() + 1..].copy_from_slice(&self.port.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, PortForwardError> {
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(PortForwardError::BadMagic);
        }
        let family = match bytes[MAGIC.len()] {
            4 => Family::V4,
            6 => Family::V6,
            other => return Err(PortForwardError::UnknownFamily(other)),
        };
        let port = u16::from_be_bytes([bytes[MAGIC.len() + 1], bytes[MAGIC.len() + 2]]);
        if port == 0 {
            return Err(PortForwardError::PortZero);
        }
        Ok(Self { family, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for h in [
            ForwardHeader {
                family: Family::V4,
                port: 80,
            },
            ForwardHeader {
                family: Family::V6,
                port: u16::MAX,
            },
        ] {
            assert_eq!(ForwardHeader::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn rejects_bad_magic_family_and_port_zero() {
        let good = ForwardHeader {
            family: Family::V4,
            port: 8080,
        }
        .encode();
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(ForwardHeader::decode(&bad), Err(PortForwardError::BadMagic));
        let mut bad = good;
        bad[MAGIC.len()] = 5;
        assert_eq!(
            ForwardHeader::decode(&bad),
            Err(PortForwardError::UnknownFamily(5))
        );
        let mut bad = good;
        bad[MAGIC.len() + 1..].copy_from_slice(&[0, 0]);
        assert_eq!(ForwardHeader::decode(&bad), Err(PortForwardError::PortZero));
    }
}
