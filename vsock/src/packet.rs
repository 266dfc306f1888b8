//! virtio-vsock wire format: protocol constants and a plain-data copy of the packet header.
//!
//! Descriptor-chain parsing itself is done by `virtio_vsock::packet::VsockPacket`; this module
//! only reads its header into [`Header`] (a value we can keep, compare and test) and writes a
//! whole header back in one guest-memory write.

use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::bitmap::BitmapSlice;

/// The host's context id (virtio-vsock spec: CID 2 is always the host).
pub const HOST_CID: u64 = 2;
/// Stream sockets, the only socket type this device offers (no SEQPACKET feature).
pub const TYPE_STREAM: u16 = 1;
/// Shutdown flag: the sender will not receive any more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will not send any more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags: the connection is finished from the sender's point of view.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;
/// Largest payload a guest may put in one TX packet. Linux never sends more than
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE` (64 KiB); anything larger is hostile and dropped.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Size of the header on the wire (44 bytes).
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;
/// [`HEADER_SIZE`] as a descriptor length.
pub const HEADER_LEN: u32 = 44;
const _: () = assert!(HEADER_SIZE == HEADER_LEN as usize);

/// virtio-vsock operations (spec 5.10.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    /// Decodes the `op` field; `None` for values the spec does not define.
    pub fn from_wire(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }

    /// The `op` field value.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Rst => 3,
            Self::Shutdown => 4,
            Self::Rw => 5,
            Self::CreditUpdate => 6,
            Self::CreditRequest => 7,
        }
    }
}

/// Errors writing a header into a guest buffer.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("cannot write the vsock header into guest memory: {0}")]
    WriteHeader(virtio_vsock::packet::Error),
}

/// A copy of the 44-byte virtio-vsock header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Copies the header out of a parsed packet (the packet already holds it in host order).
    pub fn from_packet<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// The decoded operation, `None` if the guest sent an undefined one.
    pub fn op(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }

    /// Little-endian wire bytes (the field layout of spec 5.10.6, `struct virtio_vsock_hdr`).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.type_.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// Writes the whole header into the packet's header buffer with a single memory write.
    pub fn write_to<B: BitmapSlice>(
        &self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Result<(), PacketError> {
        pkt.set_header_from_raw(&self.to_bytes())
            .map_err(PacketError::WriteHeader)
    }

    /// The RST answering `self` (addresses swapped), used for packets that have no connection.
    pub fn reset_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst.to_wire(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 7,
            type_: TYPE_STREAM,
            op: Op::Rw.to_wire(),
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: 99,
        }
    }

    #[test]
    fn op_round_trips_and_rejects_unknown_values() {
        for raw in 1..=7u16 {
            let op = Op::from_wire(raw).unwrap();
            assert_eq!(op.to_wire(), raw);
        }
        assert_eq!(Op::from_wire(0), None);
        assert_eq!(Op::from_wire(8), None);
        assert_eq!(Op::from_wire(u16::MAX), None);
    }

    #[test]
    fn header_survives_a_write_and_parse_through_a_packet() {
        let mut hdr_buf = [0u8; HEADER_SIZE];
        let mut data_buf = [0u8; 16];
        // SAFETY: both buffers outlive the packet and nothing else accesses them meanwhile.
        let mut pkt = unsafe { VsockPacket::new(&mut hdr_buf, Some(&mut data_buf)) }.unwrap();
        let hdr = sample();
        hdr.write_to(&mut pkt).unwrap();
        assert_eq!(Header::from_packet(&pkt), hdr);
        assert_eq!(hdr.op(), Some(Op::Rw));
    }

    #[test]
    fn wire_layout_is_little_endian_at_spec_offsets() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], 3);
        assert_eq!(bytes[8], 2);
        assert_eq!(&bytes[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&bytes[20..22], &[0x00, 0x04]);
        assert_eq!(bytes[28], 1);
        assert_eq!(bytes[30], 5);
        assert_eq!(bytes[40], 99);
    }

    #[test]
    fn reset_reply_swaps_addresses_and_clears_payload() {
        let rst = sample().reset_reply();
        assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, 3));
        assert_eq!((rst.src_port, rst.dst_port), (1024, 0x1234_5678));
        assert_eq!(rst.op(), Some(Op::Rst));
        assert_eq!((rst.len, rst.flags, rst.buf_alloc), (0, 0, 0));
    }
}
