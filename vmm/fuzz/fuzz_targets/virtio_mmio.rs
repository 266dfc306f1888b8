//! The virtio-mmio transport and the devices behind it, driven by a hostile guest: arbitrary
//! register writes and reads (sizes, offsets, values), a helper handshake with fuzzed queue
//! addresses, guest memory full of fuzzed descriptors, then queue kicks and host events.
#![no_main]

#[path = "../common/deadline.rs"]
mod deadline;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use husk_vmm::devices::BusDevice;
use husk_vmm::devices::virtio::mmio::MmioTransport;
use husk_vmm::devices::virtio::net::Net;
use husk_vmm::devices::virtio::tap::Tap;
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::devices::virtio::{IrqTrigger, VirtioDevice};
use husk_vsock::VsockDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 256 << 10;

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let _deadline = deadline::Deadline::arm();
    if data.len() < 2 {
        return;
    }
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let Ok(dir) = tempfile::tempdir() else { return };
    let (ours, peer) = UnixDatagram::pair().expect("pair");
    let _ = ours.set_nonblocking(true);
    let _ = peer.set_nonblocking(true);
    let device: Box<dyn VirtioDevice> = if data[0] & 1 == 0 {
        let Ok(d) = VsockDevice::new(3, &dir.path().join("v.sock"), log.clone()) else {
            return;
        };
        Box::new(Vsock::new(d, log.clone()))
    } else {
        let tap = Tap::from_file(std::fs::File::from(OwnedFd::from(ours)));
        Box::new(Net::new(tap, [2, 0, 0, 0, 0, 1], log.clone()))
    };
    let queues = device.queue_max_sizes().len();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    // The first part of the input is guest memory (rings and buffers).
    let split = (usize::from(data[1]) * 256).min(data.len() - 2);
    let _ = mem.write_slice(&data[2..2 + split], GuestAddress(0));
    let mut ops = &data[2 + split..];
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let kicks: Vec<EventFd> = (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("kick"))
        .collect();
    let mut t = MmioTransport::new(
        device,
        Arc::new(mem),
        irq,
        kicks
            .iter()
            .map(|k| k.try_clone().expect("clone"))
            .collect(),
        log,
    );
    while ops.len() >= 7 {
        let (op, rest) = ops.split_at(7);
        ops = rest;
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0x1ff;
        let value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        match op[0] % 8 {
            0 | 1 => w(&mut t, offset & !3, value),
            2 => {
                let len = [1, 2, 4, 8][usize::from(op[1] >> 6)];
                t.write(offset, &value.to_le_bytes().repeat(2)[..len]);
            }
            3 => {
                let mut buf = [0u8; 8];
                let len = [1, 2, 4, 8][usize::from(op[1] >> 6)];
                t.read(offset, &mut buf[..len]);
            }
            4 => {
                // The standard handshake, with queue rings at fuzzed offsets in guest memory.
                w(&mut t, 0x70, 0);
                w(&mut t, 0x70, 1);
                w(&mut t, 0x70, 3);
                w(&mut t, 0x24, 1);
                w(&mut t, 0x20, 1);
                w(&mut t, 0x24, 0);
                w(&mut t, 0x20, value & 0xffff_ffff);
                w(&mut t, 0x70, 11);
                for q in 0..queues as u32 {
                    let base = (value.rotate_left(q * 7) & 0x3_f000) % (MEM as u32);
                    w(&mut t, 0x30, q);
                    w(&mut t, 0x38, 1 << (op[1] % 9));
                    w(&mut t, 0x80, base);
                    w(&mut t, 0x90, base + 0x400);
                    w(&mut t, 0xa0, base + 0x800);
                    w(&mut t, 0x44, 1);
                }
                w(&mut t, 0x70, 15);
            }
            5 => {
                if t.is_activated() {
                    t.device_mut()
                        .queue_event(usize::from(op[1]) % (queues + 1));
                }
            }
            6 => t.device_mut().host_event(0),
            _ => {
                let _ = peer.send(&op.repeat(usize::from(op[1] % 32)));
            }
        }
    }
});
