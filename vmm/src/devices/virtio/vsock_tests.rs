//! The vsock device behind the mmio transport: connections through the rings, reset.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::INT_VRING;
use husk_vsock::packet::Op;
use husk_vsock::test_utils::{DriverQueue, GUEST_CID, guest_header, guest_memory, logger};

const GUEST_PORT: u32 = 1024;

fn activation(mem: &Memory, queues: Vec<Queue>, irq: &IrqTrigger) -> Activation {
    Activation {
        mem: mem.clone(),
        queues,
        irq: irq.clone(),
        kicks: Vec::new(),
        acked_features: 1 << VIRTIO_F_VERSION_1,
    }
}

/// A host client of the hybrid socket at `uds` that asks for the guest's port.
fn connect_to_guest_port(uds: &std::path::Path) -> UnixStream {
    let mut client = UnixStream::connect(uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .unwrap();
    client
}

/// After a reset the host side of an established connection ends (EOF or a reset).
fn assert_host_side_gone(client: &mut UnixStream) {
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.ends_with(b"\n"), "only the OK line came: {rest:?}"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the connection outlived the reset"
        ),
    }
}

#[test]
fn host_connect_reaches_the_guest_and_the_reply_reaches_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mem: Memory = Arc::new(guest_memory());
    let device = VsockDevice::new(GUEST_CID, &uds, logger()).unwrap();
    let mut vsock = Vsock::new(device, logger());
    assert_eq!(vsock.device_type(), 19);
    let mut cid = [0u8; 8];
    vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);

    let mut rx = DriverQueue::new(&mem, 0);
    let mut tx = DriverQueue::new(&mem, 1);
    let ev = DriverQueue::new(&mem, 2);
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());

    // The host client connects before the driver is up: its request must wait.
    let mut client = connect_to_guest_port(&uds);
    vsock.host_event(0);

    rx.keep_posted(4, 4096);
    let queues = vec![rx.device_queue(), tx.device_queue(), ev.device_queue()];
    vsock.activate(activation(&mem, queues, &irq)).unwrap();
    vsock.host_event(0);
    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let request = got[0].0;
    assert_eq!(request.op, Op::Request.to_wire());
    assert_eq!(request.dst_port, GUEST_PORT);
    assert_ne!(irq.status() & INT_VRING, 0);

    tx.send(
        &guest_header(Op::Response, GUEST_PORT, request.src_port),
        &[],
    );
    vsock.queue_event(1);
    let mut line = [0u8; 3];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK ");

    // Driver reset: the host side of every connection goes away.
    vsock.reset();
    vsock.host_event(0);
    assert_host_side_gone(&mut client);
    vsock.queue_event(1);
}

#[test]
fn wrong_queue_count_is_refused_and_events_before_activation_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mem: Memory = Arc::new(guest_memory());
    let device = VsockDevice::new(GUEST_CID, &dir.path().join("v.sock"), logger()).unwrap();
    let mut vsock = Vsock::new(device, logger());
    vsock.queue_event(0);
    vsock.queue_event(1);
    vsock.queue_event(7);
    vsock.host_event(0);
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let rx = DriverQueue::new(&mem, 0);
    let err = vsock
        .activate(activation(&mem, vec![rx.device_queue()], &irq))
        .unwrap_err();
    assert!(matches!(err, VirtioError::QueueCount { got: 1, want: 3 }));
}

/// A TX avail index more than a ring ahead: the device reports that it needs a reset,
/// leaves its queues alone from then on, and works again after the driver's reset.
#[test]
fn a_corrupt_queue_needs_reset_until_the_driver_resets() {
    let dir = tempfile::tempdir().unwrap();
    let mem: Memory = Arc::new(guest_memory());
    let device = VsockDevice::new(GUEST_CID, &dir.path().join("v.sock"), logger()).unwrap();
    let mut vsock = Vsock::new(device, logger());
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let (rx, mut tx, ev) = (
        DriverQueue::new(&mem, 0),
        DriverQueue::new(&mem, 1),
        DriverQueue::new(&mem, 2),
    );
    let queues = vec![rx.device_queue(), tx.device_queue(), ev.device_queue()];
    vsock.activate(activation(&mem, queues, &irq)).unwrap();
    assert!(!vsock.needs_reset());
    tx.set_avail_idx(1000);
    vsock.queue_event(TX_QUEUE);
    assert!(vsock.needs_reset());
    // Further kicks touch nothing (the queues are gone) and do not clear the state.
    vsock.queue_event(TX_QUEUE);
    vsock.host_event(0);
    assert!(vsock.needs_reset());
    vsock.reset();
    assert!(!vsock.needs_reset());
}

/// Runs `f` on a thread under the vCPU threads' syscall filter, as the driver's register
/// writes run; a forbidden call kills the test process (SIGSYS).
fn on_vcpu_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Hostile guest: it activates and resets its vsock device while host connections are
/// open. Both arrive on a vCPU thread, whose filter allows no socket or epoll call; the
/// device must leave the host sockets to the device thread (woken through the RX kick)
/// rather than kill the monitor. The host side still goes away on reset.
#[test]
fn activation_and_reset_leave_host_sockets_to_the_device_thread() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mem: Memory = Arc::new(guest_memory());
    let device = VsockDevice::new(GUEST_CID, &uds, logger()).unwrap();
    let mut vsock = Vsock::new(device, logger());
    let (mut rx, mut tx, ev) = (
        DriverQueue::new(&mem, 0),
        DriverQueue::new(&mem, 1),
        DriverQueue::new(&mem, 2),
    );
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut client = connect_to_guest_port(&uds);
    // Accepted, then its request read: it waits for the driver.
    vsock.host_event(0);
    vsock.host_event(0);
    assert!(vsock.device.has_rx_work());

    rx.keep_posted(4, 4096);
    let queues = vec![rx.device_queue(), tx.device_queue(), ev.device_queue()];
    let mut a = activation(&mem, queues, &irq);
    a.kicks = vec![kick.try_clone().unwrap()];
    let mut vsock = on_vcpu_thread(move || {
        vsock.activate(a).unwrap();
        vsock
    });
    // The device thread was woken and delivers the waiting request.
    assert_eq!(kick.read().unwrap(), 1);
    vsock.queue_event(RX_QUEUE);
    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    tx.send(
        &guest_header(Op::Response, GUEST_PORT, got[0].0.src_port),
        &[],
    );
    vsock.queue_event(TX_QUEUE);
    let mut line = [0u8; 3];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK ");

    let mut vsock = on_vcpu_thread(move || {
        vsock.reset();
        vsock
    });
    assert_eq!(kick.read().unwrap(), 1);
    vsock.queue_event(RX_QUEUE);
    assert_host_side_gone(&mut client);
}
