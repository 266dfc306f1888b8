//! A guest driver's view of one split virtqueue in guest memory (shared by the targets).

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 64;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    next_avail: u16,
}

impl Ring {
    /// Rings at `base`: descriptors, then the available ring, then the used ring.
    pub fn new(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 16 * u64::from(QUEUE_SIZE),
            used: base + 0x800,
            next_desc: 0,
            next_avail: 0,
        }
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Posts a chain of (addr, len, device-writable) descriptors.
    pub fn post(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) {
        if descs.is_empty() || descs.len() > usize::from(QUEUE_SIZE) {
            return;
        }
        let count = descs.len() as u16;
        if self.next_desc + count > QUEUE_SIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= F_NEXT;
            }
            let at = GuestAddress(self.desc + 16 * u64::from(index));
            let _ = mem.write_obj(addr, at);
            let _ = mem.write_obj(len, GuestAddress(at.0 + 8));
            let _ = mem.write_obj(flags, GuestAddress(at.0 + 12));
            let _ = mem.write_obj(index + 1, GuestAddress(at.0 + 14));
        }
        self.next_desc = (head + count) % QUEUE_SIZE;
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.next_avail % QUEUE_SIZE));
        let _ = mem.write_obj(head, slot);
        self.next_avail = self.next_avail.wrapping_add(1);
        let _ = mem.write_obj(self.next_avail, GuestAddress(self.avail + 2));
    }
}
