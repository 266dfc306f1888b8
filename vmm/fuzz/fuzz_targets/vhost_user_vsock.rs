//! The vhost-user vsock backend (what QEMU's `vhost-user-vsock-pci` talks to), driven by a
//! hostile guest: guest memory full of fuzzed rings and buffers, queues at fuzzed addresses
//! and sizes, then kicks, host events and host clients in fuzzed order.
#![no_main]

#[path = "../common/deadline.rs"]
mod deadline;

use std::io::Write;
use std::os::unix::net::UnixStream;

use husk_vsock::VsockDevice;
use husk_vsock::vhost_user::{HOST_EVENT, VHOST_USER_QUEUES, VsockBackend};
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const MEM: usize = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let _deadline = deadline::Deadline::arm();
    if data.len() < 8 {
        return;
    }
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let Ok(dir) = tempfile::tempdir() else { return };
    let uds = dir.path().join("v.sock");
    let Ok(device) = VsockDevice::new(3, &uds, log.clone()) else {
        return;
    };
    let mut backend = VsockBackend::new(device, log);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    // The first part of the input is guest memory (rings and buffers).
    let split = (usize::from(data[0]) * 512).min(data.len() - 8);
    let _ = mem.write_slice(&data[8..8 + split], GuestAddress(0));
    let mem = GuestMemoryAtomic::new(mem);
    let _ = backend.update_memory(mem.clone());
    let mut vrings = Vec::new();
    for q in 0..VHOST_USER_QUEUES {
        let Ok(vring) = VringRwLock::new(mem.clone(), 1024) else {
            return;
        };
        let word = u32::from_le_bytes([data[1 + q * 2], data[2 + q * 2], data[5], data[6]]);
        let base = u64::from(word) % MEM as u64;
        vring.set_queue_size(1 << (data[3 + q] % 11));
        // Errors are what a frontend gets for rings outside memory: keep going regardless.
        let _ = vring.set_queue_info(base, base + 0x400, base + 0x800);
        vring.set_queue_event_idx(data[7] & 1 == 1);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vrings.push(vring);
    }
    let mut clients: Vec<UnixStream> = Vec::new();
    for op in data[8 + split..].chunks(4) {
        let event = match op[0] % 4 {
            0 | 1 => u16::from(op[0] % 2),
            2 => HOST_EVENT,
            _ => {
                // A host client: connect, then send a (maybe malformed) line.
                if clients.len() < 8 {
                    if let Ok(c) = UnixStream::connect(&uds) {
                        clients.push(c);
                    }
                }
                if let Some(c) = clients.last_mut() {
                    let _ = c.write_all(&op[1..]);
                    let _ = c.write_all(b"CONNECT 1\n");
                }
                HOST_EVENT
            }
        };
        let _ = backend.handle_event(event, EventSet::IN, &vrings, 0);
    }
});
