//! virtio-net against a socketpair standing in for the tap, and against corrupt rings.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::INT_VRING;
use husk_vsock::test_utils::{DriverQueue, guest_memory, logger};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const SCRATCH: u64 = 20 << 20;

fn net() -> (Net, UnixDatagram) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let tap = Tap::from_file(File::from(OwnedFd::from(ours)));
    (Net::new(tap, MAC, logger()), peer)
}

#[test]
fn config_space_is_the_mac() {
    let (n, _peer) = net();
    let mut mac = [0u8; 6];
    n.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(n.device_type(), 1);
    assert!(!n.wants_host_event(0), "not watching before activation");
}

#[test]
fn frames_flow_both_ways_and_bad_chains_are_dropped() {
    let (mut n, peer) = net();
    let mem: Memory = Arc::new(guest_memory());
    let mut rx = DriverQueue::new(&mem, 0);
    let mut tx = DriverQueue::new(&mem, 1);
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    n.activate(Activation {
        mem: mem.clone(),
        queues: vec![rx.device_queue(), tx.device_queue()],
        irq: irq.clone(),
        kicks: Vec::new(),
        acked_features: 1 << VIRTIO_F_VERSION_1,
    })
    .unwrap();
    assert!(n.wants_host_event(0));

    // Guest → tap: header and frame in two descriptors.
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(b"ethernet frame");
    mem.write_slice(&frame[..VNET_HDR_LEN], GuestAddress(SCRATCH))
        .unwrap();
    mem.write_slice(&frame[VNET_HDR_LEN..], GuestAddress(SCRATCH + 0x1000))
        .unwrap();
    tx.post_raw(&[(SCRATCH, 12, false), (SCRATCH + 0x1000, 14, false)]);
    // A chain with a device-writable descriptor and one outside guest memory: dropped.
    tx.post_raw(&[(SCRATCH, 12, true)]);
    tx.post_raw(&[(1 << 40, 100, false)]);
    n.queue_event(1);
    let mut got = [0u8; 100];
    assert_eq!(peer.recv(&mut got).unwrap(), frame.len());
    assert_eq!(&got[..frame.len()], &frame[..]);
    assert_eq!(tx.used().len(), 3);
    assert_ne!(irq.status() & INT_VRING, 0);

    // Tap → guest: waits for a buffer, then fills it with num_buffers = 1.
    peer.send(&frame).unwrap();
    n.host_event(0);
    assert!(
        !n.wants_host_event(0),
        "frame pending, no buffers: stop watching the tap"
    );
    let buf = SCRATCH + 0x10_0000;
    rx.post_raw(&[(buf, 8, true), (buf + 0x1000, 4096, true)]);
    n.queue_event(0);
    let used = rx.used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1 as usize, frame.len());
    let mut hdr = [0u8; 8];
    mem.read_slice(&mut hdr, GuestAddress(buf)).unwrap();
    let mut rest = [0u8; 18];
    mem.read_slice(&mut rest, GuestAddress(buf + 0x1000))
        .unwrap();
    assert_eq!(&rest[2..4], &[1, 0], "num_buffers");
    assert_eq!(&rest[4..], b"ethernet frame");
    assert!(n.wants_host_event(0));

    // A frame larger than the guest buffer is dropped, the buffer returned empty.
    peer.send(&vec![7u8; 2000]).unwrap();
    let head = rx.post_raw(&[(buf, 100, true)]);
    n.host_event(0);
    assert_eq!(rx.used(), vec![(head, 0)]);
}

/// An avail index more than a ring ahead on either queue: the device reports that it needs
/// a reset, stops touching its queues and the tap, and works again after the driver's reset.
#[test]
fn a_corrupt_queue_needs_reset_until_the_driver_resets() {
    for corrupt in [RX_QUEUE, TX_QUEUE] {
        let (mut n, peer) = net();
        let mem: Memory = Arc::new(guest_memory());
        let mut rx = DriverQueue::new(&mem, 0);
        let mut tx = DriverQueue::new(&mem, 1);
        let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        n.activate(Activation {
            mem: mem.clone(),
            queues: vec![rx.device_queue(), tx.device_queue()],
            irq: irq.clone(),
            kicks: Vec::new(),
            acked_features: 1 << VIRTIO_F_VERSION_1,
        })
        .unwrap();
        assert!(!n.needs_reset());
        if corrupt == RX_QUEUE {
            rx.set_avail_idx(1000);
            peer.send(&[0u8; 64]).unwrap();
            n.host_event(0);
        } else {
            tx.set_avail_idx(1000);
            n.queue_event(TX_QUEUE);
        }
        assert!(n.needs_reset(), "queue {corrupt}");
        assert!(
            !n.wants_host_event(0),
            "queue {corrupt}: still watching the tap"
        );
        n.queue_event(RX_QUEUE);
        n.queue_event(TX_QUEUE);
        assert!(n.needs_reset(), "queue {corrupt}");
        n.reset();
        assert!(!n.needs_reset(), "queue {corrupt}");
    }
}
