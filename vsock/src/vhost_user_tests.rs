//! The vhost-user backend (QEMU's vsock device) against a hostile guest driver: corrupt
//! rings must end in a disabled queue or a dropped chain, and every `handle_event` call must
//! return, whatever the rings hold.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use slog::o;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;

const SIZE: u16 = 16;
const MEM_SIZE: usize = 0x10000;
const F_NEXT: u16 = 1;

struct Rig {
    _dir: tempfile::TempDir,
    backend: VsockBackend,
    vrings: Vec<VringRwLock>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    uds: std::path::PathBuf,
}

/// Ring `i` lives at `0x4000 * (i + 1)`: descriptors, available ring, used ring.
fn ring_base(i: usize) -> u64 {
    0x4000 * (i as u64 + 1)
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let log = Logger::root(slog::Discard, o!());
    let uds = dir.path().join("v.sock");
    let device = VsockDevice::new(3, &uds, log.clone()).unwrap();
    let mut backend = VsockBackend::new(device, log);
    let mem = GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    );
    backend.update_memory(mem.clone()).unwrap();
    let vrings = (0..VHOST_USER_QUEUES)
        .map(|i| {
            let vring = VringRwLock::new(mem.clone(), SIZE).unwrap();
            let base = ring_base(i);
            vring.set_queue_size(SIZE);
            vring
                .set_queue_info(base, base + 0x1000, base + 0x2000)
                .unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vring
        })
        .collect();
    Rig {
        _dir: dir,
        backend,
        vrings,
        mem,
        uds,
    }
}

impl Rig {
    fn write<T: vm_memory::ByteValued>(&self, value: T, at: u64) {
        self.mem
            .memory()
            .write_obj(value, GuestAddress(at))
            .unwrap();
    }

    /// Descriptor `index` of ring `q`.
    fn desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = ring_base(q) + 16 * u64::from(index);
        self.write(addr, at);
        self.write(len, at + 8);
        self.write(flags, at + 12);
        self.write(next, at + 14);
    }

    /// Offers `head` as the `avail_idx`-th buffer (in the slot that index ends at) and
    /// publishes the available index.
    fn offer(&self, q: usize, head: u16, avail_idx: u16) {
        let avail = ring_base(q) + 0x1000;
        let slot = u64::from(avail_idx.wrapping_sub(1) % SIZE);
        self.write(head, avail + 4 + 2 * slot);
        self.write(avail_idx, avail + 2);
    }

    /// How many buffers of queue `q` the device has taken.
    fn taken(&self, q: usize) -> u16 {
        self.vrings[q].get_ref().get_queue().next_avail()
    }

    fn enabled(&self, q: usize) -> bool {
        self.vrings[q].get_ref().is_enabled()
    }

    /// Runs `event` on a thread of its own; panics if it does not return in 5 s.
    fn handle(self, event: u16) -> Self {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rig = self;
            let out = rig
                .backend
                .handle_event(event, EventSet::IN, &rig.vrings, 0);
            let _ = done.send((rig, out.is_ok()));
        });
        let (rig, ok) = result
            .recv_timeout(Duration::from_secs(5))
            .expect("handle_event did not return: the backend spins on a corrupt ring");
        assert!(ok, "handle_event must not end the worker with an error");
        rig
    }
}

#[test]
fn an_avail_index_beyond_the_ring_disables_the_tx_queue() {
    let rig = rig();
    rig.offer(TX_QUEUE, 0, SIZE + 7);
    let rig = rig.handle(TX_EVENT);
    assert!(
        !rig.enabled(TX_QUEUE),
        "the corrupt TX queue is still served"
    );
    // Further kicks are ignored, not re-parsed.
    let rig = rig.handle(TX_EVENT);
    assert!(!rig.enabled(TX_QUEUE));
    assert!(rig.enabled(RX_QUEUE), "only the corrupt queue stops");
}

#[test]
fn an_avail_index_beyond_the_ring_disables_the_rx_queue() {
    let rig = rig();
    // A host client asks for a guest port: the device has a request for the guest.
    let mut client = UnixStream::connect(&rig.uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    rig.offer(RX_QUEUE, 0, SIZE * 3);
    let mut rig = rig.handle(HOST_EVENT);
    for _ in 0..3 {
        rig = rig.handle(HOST_EVENT);
    }
    assert!(
        !rig.enabled(RX_QUEUE),
        "the corrupt RX queue is still served"
    );
}

#[test]
fn descriptor_loops_and_wild_buffers_are_dropped_without_spinning() {
    let rig = rig();
    // A chain whose descriptor points at itself, a zero-length buffer, and one outside
    // guest memory.
    rig.desc(TX_QUEUE, 0, 0x100, 64, F_NEXT, 0);
    rig.offer(TX_QUEUE, 0, 1);
    let rig = rig.handle(TX_EVENT);
    assert_eq!(
        rig.taken(TX_QUEUE),
        1,
        "the looping chain was not looked at"
    );
    rig.desc(TX_QUEUE, 1, 0x100, 0, 0, 0);
    rig.offer(TX_QUEUE, 1, 2);
    let rig = rig.handle(TX_EVENT);
    assert_eq!(
        rig.taken(TX_QUEUE),
        2,
        "the zero-length buffer was not looked at"
    );
    rig.desc(TX_QUEUE, 2, u64::MAX - 8, 44, 0, 0);
    rig.offer(TX_QUEUE, 2, 3);
    let rig = rig.handle(TX_EVENT);
    assert_eq!(rig.taken(TX_QUEUE), 3, "the wild buffer was not looked at");
    // A head index outside the ring.
    rig.offer(TX_QUEUE, SIZE + 1, 4);
    let rig = rig.handle(TX_EVENT);
    assert_eq!(rig.taken(TX_QUEUE), 4, "the bad head was not looked at");
    assert!(
        rig.enabled(TX_QUEUE),
        "bad chains are dropped; the queue stays usable"
    );
}
