//! Test helpers: a guest driver's view of the vsock queues in mock guest memory, and packets
//! built over plain host buffers.

// Test support only (behind `cfg(test)` or the `test-utils` feature): a failed set-up step
// is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use slog::{Logger, o};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{HEADER_LEN, HEADER_SIZE, HOST_CID, Header, Op, TYPE_STREAM};

pub const GUEST_CID: u64 = 3;
/// Guest RAM of the mock: queues at the bottom, each queue's packet buffers in its own 8 MiB.
pub const MEM_SIZE: usize = 32 << 20;
const BUFFER_BASE: u64 = 1 << 20;
const BUFFER_AREA: u64 = 8 << 20;
/// Distance between packet buffers: a header page plus the largest payload.
const BUFFER_STRIDE: u64 = 0x2_0000;
pub const QUEUE_SIZE: u16 = 64;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const _: () =
    assert!(DESC_F_NEXT as u32 == VRING_DESC_F_NEXT && DESC_F_WRITE as u32 == VRING_DESC_F_WRITE);

pub fn logger() -> Logger {
    Logger::root(slog::Discard, o!())
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A guest packet header from the guest (CID 3) to the host.
pub fn guest_header(op: Op, guest_port: u32, host_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op: op.to_wire(),
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

pub fn parse_header(bytes: &[u8]) -> Header {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
    Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A guest packet over host buffers, fed to the muxer as if parsed from a TX chain.
pub struct HostPacket {
    header: [u8; HEADER_SIZE],
    data: Vec<u8>,
}

impl HostPacket {
    pub fn new(hdr: &Header, data: &[u8]) -> Self {
        let mut hdr = *hdr;
        hdr.len = u32::try_from(data.len()).unwrap();
        Self {
            header: hdr.to_bytes(),
            data: data.to_vec(),
        }
    }

    /// An empty receive buffer with room for `capacity` payload bytes.
    pub fn rx(capacity: usize) -> Self {
        Self {
            header: [0; HEADER_SIZE],
            data: vec![0; capacity],
        }
    }

    pub fn packet(&mut self) -> VsockPacket<'_, ()> {
        let data = (!self.data.is_empty()).then_some(self.data.as_mut_slice());
        // SAFETY: the buffers live as long as the returned packet borrows `self`, and nothing
        // else touches them meanwhile.
        let mut pkt = unsafe { VsockPacket::new(&mut self.header, data) }.unwrap();
        let hdr = self.header;
        pkt.set_header_from_raw(&hdr).unwrap();
        pkt
    }

    pub fn header(&self) -> Header {
        parse_header(&self.header)
    }

    pub fn data(&self, len: u32) -> &[u8] {
        &self.data[..len as usize]
    }
}

/// One split virtqueue as the guest driver sees it: it posts buffers and reads the used ring.
///
/// Lays the rings out itself: `virtio_queue::mock::MockSplitQueue` computes the used ring's
/// address from the available ring's element count instead of its byte size, so with more than
/// a handful of entries the device's used-ring writes land in the available ring.
pub struct DriverQueue<'a> {
    mem: &'a GuestMemoryMmap,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    buffers: u64,
    next_desc: u16,
    next_avail: u16,
    next_used: u16,
    /// head descriptor → (header address, data address) of posted RX buffers.
    rx_buffers: HashMap<u16, (GuestAddress, GuestAddress)>,
}

impl<'a> DriverQueue<'a> {
    /// Queue number `n`: rings at `n * 64 KiB`, buffers in their own area.
    pub fn new(mem: &'a GuestMemoryMmap, n: u64) -> Self {
        let size = u64::from(QUEUE_SIZE);
        let desc_table = GuestAddress(n * 0x1_0000);
        let avail = desc_table.unchecked_add(16 * size);
        // flags, idx, ring, used_event; the used ring is 4-byte aligned.
        let used = GuestAddress((avail.0 + 6 + 2 * size).next_multiple_of(4));
        mem.write_slice(&[0u8; 0x1000], desc_table).unwrap();
        Self {
            mem,
            desc_table,
            avail,
            used,
            buffers: BUFFER_BASE + n * BUFFER_AREA,
            next_desc: 0,
            next_avail: 0,
            next_used: 0,
            rx_buffers: HashMap::new(),
        }
    }

    /// The device side of this queue.
    pub fn device_queue(&self) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_ready(true);
        let split = |a: GuestAddress| {
            let lo = u32::try_from(a.0 & 0xffff_ffff).unwrap();
            (Some(lo), Some(u32::try_from(a.0 >> 32).unwrap()))
        };
        let (lo, hi) = split(self.desc_table);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        queue.set_used_ring_address(lo, hi);
        queue
    }

    /// Buffer address for descriptor `index` (reused round robin with the descriptors).
    fn buffer(&self, index: u16) -> GuestAddress {
        GuestAddress(self.buffers + u64::from(index % QUEUE_SIZE) * BUFFER_STRIDE)
    }

    /// Wraps to the table start if a chain of `count` would run past its end; returns the head.
    fn reserve(&mut self, count: u16) -> u16 {
        if self.next_desc + count > QUEUE_SIZE {
            self.next_desc = 0;
        }
        self.next_desc
    }

    /// Writes the available ring's index as a hostile driver may: anything, even more than a
    /// ring ahead of what the device consumed.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Publishes `head` in the available ring without writing descriptors (hostile guests).
    pub fn publish_head(&mut self, head: u16) {
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(self.next_avail % QUEUE_SIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Writes a chain into the descriptor table and publishes it in the available ring.
    fn post(&mut self, descs: &[(GuestAddress, u32, u16)]) -> u16 {
        let count = u16::try_from(descs.len()).unwrap();
        let head = self.reserve(count);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = head + u16::try_from(i).unwrap();
            let next_flag = if i + 1 < descs.len() { DESC_F_NEXT } else { 0 };
            let desc = RawDescriptor::from(SplitDescriptor::new(
                addr.0,
                len,
                flags | next_flag,
                index + 1,
            ));
            let at = self.desc_table.unchecked_add(16 * u64::from(index));
            self.mem.write_obj(desc, at).unwrap();
        }
        self.publish_head(head);
        self.next_desc = (head + count) % QUEUE_SIZE;
        head
    }

    /// Posts a TX packet: header and data in separate descriptors (Linux ≤ 6.1 style).
    pub fn send(&mut self, hdr: &Header, data: &[u8]) -> u16 {
        let mut hdr = *hdr;
        hdr.len = u32::try_from(data.len()).unwrap();
        let head = self.reserve(2);
        let base = self.buffer(head);
        self.mem.write_slice(&hdr.to_bytes(), base).unwrap();
        let data_addr = base.unchecked_add(0x1000);
        self.mem.write_slice(data, data_addr).unwrap();
        if data.is_empty() {
            self.post(&[(base, HEADER_LEN, 0)])
        } else {
            let len = u32::try_from(data.len()).unwrap();
            self.post(&[(base, HEADER_LEN, 0), (data_addr, len, 0)])
        }
    }

    /// Posts a TX packet with header and data in one descriptor (Linux ≥ 6.2 style).
    pub fn send_single(&mut self, hdr: &Header, data: &[u8]) -> u16 {
        let mut hdr = *hdr;
        hdr.len = u32::try_from(data.len()).unwrap();
        let head = self.reserve(1);
        let base = self.buffer(head);
        self.mem.write_slice(&hdr.to_bytes(), base).unwrap();
        self.mem
            .write_slice(data, base.unchecked_add(HEADER_SIZE as u64))
            .unwrap();
        let len = u32::try_from(HEADER_SIZE + data.len()).unwrap();
        self.post(&[(base, len, 0)])
    }

    /// Posts raw descriptors (for malformed chains).
    pub fn post_raw(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let descs: Vec<(GuestAddress, u32, u16)> = descs
            .iter()
            .map(|&(addr, len, writable)| {
                let flags = if writable { DESC_F_WRITE } else { 0 };
                (GuestAddress(addr), len, flags)
            })
            .collect();
        self.post(&descs)
    }

    /// Posts an RX buffer: header descriptor plus a `capacity`-byte data descriptor.
    pub fn post_rx(&mut self, capacity: u32) -> u16 {
        let head = self.reserve(2);
        let base = self.buffer(head);
        let data = base.unchecked_add(0x1000);
        let w = DESC_F_WRITE;
        let head = self.post(&[(base, HEADER_LEN, w), (data, capacity, w)]);
        self.rx_buffers.insert(head, (base, data));
        head
    }

    /// Posts RX buffers until `count` are outstanding.
    pub fn keep_posted(&mut self, count: usize, capacity: u32) {
        while self.rx_buffers.len() < count {
            self.post_rx(capacity);
        }
    }

    /// New used-ring entries since the last call: (head, length).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.next_used != idx {
            let elem = self
                .used
                .unchecked_add(4 + 8 * u64::from(self.next_used % QUEUE_SIZE));
            let id: u32 = self.mem.read_obj(elem).unwrap();
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
            out.push((u16::try_from(id).unwrap(), len));
            self.next_used = self.next_used.wrapping_add(1);
        }
        out
    }

    /// New packets the device put in RX buffers: (header, payload).
    pub fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used()
            .into_iter()
            .map(|(head, len)| {
                let (hdr_addr, data_addr) = self.rx_buffers.remove(&head).unwrap();
                assert!(
                    len as usize >= HEADER_SIZE,
                    "used length {len} below a header"
                );
                let mut hdr = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut hdr, hdr_addr).unwrap();
                let hdr = parse_header(&hdr);
                assert_eq!(len as usize, HEADER_SIZE + hdr.len as usize);
                let mut data = vec![0u8; hdr.len as usize];
                self.mem.read_slice(&mut data, data_addr).unwrap();
                (hdr, data)
            })
            .collect()
    }
}
