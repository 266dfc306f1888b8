//! Queue processing through (mock) guest memory, driven like a guest driver would.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::credit::HOST_BUF_ALLOC;
use crate::hybrid_socket::forward_path;
use crate::packet::{Header, MAX_PKT_DATA, Op};
use crate::test_utils::{
    DriverQueue, GUEST_CID, MEM_SIZE, QUEUE_SIZE as QUEUE_SIZE_FOR_TESTS, guest_header,
    guest_memory, logger,
};

const GUEST_PORT: u32 = 1024;
/// Free guest memory (above both queues' buffer areas) for hand-made chains.
const SCRATCH: u64 = 20 << 20;

struct Rig<'a> {
    dir: tempfile::TempDir,
    mem: &'a GuestMemoryMmap,
    device: VsockDevice,
    rx: DriverQueue<'a>,
    tx: DriverQueue<'a>,
    rxq: Queue,
    txq: Queue,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let device = VsockDevice::new(GUEST_CID, &dir.path().join("v.sock"), logger()).unwrap();
        let rx = DriverQueue::new(mem, RX_QUEUE as u64);
        let tx = DriverQueue::new(mem, TX_QUEUE as u64);
        let (rxq, txq) = (rx.device_queue(), tx.device_queue());
        Self {
            dir,
            mem,
            device,
            rx,
            tx,
            rxq,
            txq,
        }
    }

    fn client(&self, line: &[u8]) -> UnixStream {
        let mut client = UnixStream::connect(self.device.uds_path()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(line).unwrap();
        client
    }

    fn host_events(&mut self) {
        for _ in 0..3 {
            self.device.process_host_events();
        }
        self.device.process_rx(self.mem, &mut self.rxq).unwrap();
    }

    fn guest_sends(&mut self, hdr: &Header, data: &[u8]) {
        self.tx.send(hdr, data);
        self.device.process_tx(self.mem, &mut self.txq).unwrap();
        self.device.process_rx(self.mem, &mut self.rxq).unwrap();
    }

    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.rx.received()
    }

    /// A host client connected to guest port 1024; returns it and its host port.
    fn connect(&mut self) -> (UnixStream, u32) {
        for _ in 0..8 {
            self.rx.post_rx(4096);
        }
        let mut client = self.client(b"CONNECT 1024\n");
        self.host_events();
        let request = self.received()[0].0;
        assert_eq!(request.op(), Some(Op::Request));
        self.guest_sends(
            &guest_header(Op::Response, GUEST_PORT, request.src_port),
            &[],
        );
        let mut line = [0u8; 32];
        let n = client.read(&mut line).unwrap();
        assert!(line[..n].starts_with(b"OK "));
        (client, request.src_port)
    }
}

#[test]
fn echo_through_guest_memory() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let (mut client, host_port) = rig.connect();
    client.write_all(b"ping").unwrap();
    rig.host_events();
    let rx = rig.received();
    assert_eq!(
        (rx[0].0.op(), rx[0].1.as_slice()),
        (Some(Op::Rw), &b"ping"[..])
    );

    // Split header/data descriptors, then a single descriptor (newer guests).
    rig.guest_sends(&guest_header(Op::Rw, GUEST_PORT, host_port), b"po");
    rig.tx
        .send_single(&guest_header(Op::Rw, GUEST_PORT, host_port), b"ng");
    rig.device.process_tx(&mem, &mut rig.txq).unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert!(rig.tx.used().iter().all(|&(_, len)| len == 0));
}

#[test]
fn pending_packets_wait_for_receive_buffers() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let _client = rig.client(b"CONNECT 1024\n");
    rig.host_events();
    assert!(rig.device.has_rx_work());
    assert!(rig.received().is_empty());
    rig.rx.post_rx(4096);
    assert!(rig.device.process_rx(&mem, &mut rig.rxq).unwrap());
    assert_eq!(rig.received()[0].0.op(), Some(Op::Request));
    assert!(!rig.device.has_rx_work());
}

#[test]
fn malformed_tx_chains_are_consumed_without_harm() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let header_at = |addr: u64, len: u32| {
        let mut hdr = guest_header(Op::Rw, GUEST_PORT, 1);
        hdr.len = len;
        mem.write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
    };
    header_at(SCRATCH, 100);
    header_at(SCRATCH + 0x1000, MAX_PKT_DATA + 1);
    header_at(SCRATCH + 0x2000, 0);
    let end = MEM_SIZE as u64;
    let chains: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(SCRATCH + 0x2000, 44, true)],  // header device-writable
        vec![(SCRATCH + 0x2000, 10, false)], // header too short
        vec![(end + 0x1000, 44, false)],     // header outside memory
        vec![(end - 10, 44, false)],         // header crosses the end
        vec![(SCRATCH, 44, false)],          // data missing
        vec![(SCRATCH, 44, false), (u64::MAX - 50, 100, false)], // data address wraps
        vec![(SCRATCH, 44, false), (SCRATCH + 0x4000, 10, false)], // data shorter than len
        vec![(SCRATCH, 44, false), (SCRATCH + 0x4000, 100, true)], // data writable
        vec![
            (SCRATCH + 0x1000, 44, false),
            (SCRATCH + 0x4000, 0x2_0000, false),
        ], // oversized
    ];
    for chain in &chains {
        rig.tx.post_raw(chain);
    }
    rig.device.process_tx(&mem, &mut rig.txq).unwrap();
    let used = rig.tx.used();
    assert_eq!(used.len(), chains.len());
    assert!(used.iter().all(|&(_, len)| len == 0));
    // The data-less RW for an unknown connection got its RST; the device still works.
    rig.rx.post_rx(4096);
    rig.device.process_rx(&mem, &mut rig.rxq).unwrap();
    rig.received();
    let (mut client, host_port) = rig.connect();
    rig.guest_sends(&guest_header(Op::Rw, GUEST_PORT, host_port), b"ok");
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn out_of_range_head_indexes_are_skipped() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    rig.tx.publish_head(u16::MAX);
    rig.tx.publish_head(64);
    assert!(!rig.device.process_tx(&mem, &mut rig.txq).unwrap());
    rig.guest_sends(&guest_header(Op::Rw, 5, 6), b"stray"); // queues an RST
    rig.rx.publish_head(1000);
    rig.rx.post_rx(4096);
    rig.device.process_rx(&mem, &mut rig.rxq).unwrap();
    assert_eq!(rig.received()[0].0.op(), Some(Op::Rst));
}

#[test]
fn buffers_without_a_data_area_do_not_stall_the_device() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    rig.rx.post_rx(4096);
    let mut client = rig.client(b"CONNECT 1024\n");
    rig.host_events();
    let request = rig.received()[0].0;
    rig.guest_sends(
        &guest_header(Op::Response, GUEST_PORT, request.src_port),
        &[],
    );
    let mut line = [0u8; 32];
    let _ = client.read(&mut line).unwrap();
    // Only zero-length data areas on offer while host data waits.
    for _ in 0..3 {
        rig.rx
            .post_raw(&[(SCRATCH, 44, true), (SCRATCH + 0x1000, 0, true)]);
    }
    client.write_all(b"data").unwrap();
    rig.host_events();
    let used = rig.rx.used();
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|&(_, len)| len == 0));
    rig.rx.post_rx(4096);
    rig.device.process_rx(&mem, &mut rig.rxq).unwrap();
    let rx = rig.received();
    assert_eq!(rx[0].1, b"data");
}

#[test]
fn malformed_rx_chains_are_returned_empty() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    rig.guest_sends(&guest_header(Op::Rw, 5, 6), b"stray"); // queues an RST
    rig.rx
        .post_raw(&[(SCRATCH, 44, false), (SCRATCH + 0x1000, 4096, false)]);
    rig.rx.post_raw(&[
        (SCRATCH, 44, true),
        (SCRATCH + 0x1000, MAX_PKT_DATA + 1, true),
    ]);
    rig.rx
        .post_raw(&[(MEM_SIZE as u64, 44, true), (SCRATCH, 4096, true)]);
    rig.rx.post_raw(&[(SCRATCH, 20, true)]);
    rig.device.process_rx(&mem, &mut rig.rxq).unwrap();
    let used = rig.rx.used();
    assert_eq!(used.len(), 4);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert!(
        rig.device.has_rx_work(),
        "the RST still waits for a good buffer"
    );
    rig.rx.post_rx(4096);
    rig.device.process_rx(&mem, &mut rig.rxq).unwrap();
    assert_eq!(rig.received()[0].0.op(), Some(Op::Rst));
}

#[test]
fn guest_connects_to_a_host_port_socket() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let server = UnixListener::bind(forward_path(rig.device.uds_path(), 4000)).unwrap();
    rig.rx.post_rx(4096);
    rig.guest_sends(&guest_header(Op::Request, 3333, 4000), &[]);
    let (_conn, _) = server.accept().unwrap();
    let rx = rig.received();
    assert_eq!(rx[0].0.op(), Some(Op::Response));
    assert_eq!((rx[0].0.src_port, rx[0].0.dst_port), (4000, 3333));
    let _keep = &rig.dir;
}

#[test]
fn bulk_transfer_arrives_complete_and_in_order_both_ways() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let (client, host_port) = rig.connect();
    let payload: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();

    // Host → guest: the guest keeps 16 buffers posted and returns credit as it reads.
    let mut writer = client.try_clone().unwrap();
    let to_guest = payload.clone();
    let feeder = std::thread::spawn(move || writer.write_all(&to_guest).unwrap());
    let mut got = Vec::new();
    while got.len() < payload.len() {
        rig.rx.keep_posted(16, 4096);
        rig.host_events();
        for (hdr, data) in rig.received() {
            // Out of credit, the device may ask for more; everything else is payload.
            if hdr.op() != Some(Op::CreditRequest) {
                assert_eq!(hdr.op(), Some(Op::Rw), "{hdr:?}");
                got.extend_from_slice(&data);
            }
        }
        let mut credit = guest_header(Op::CreditUpdate, GUEST_PORT, host_port);
        credit.fwd_cnt = u32::try_from(got.len()).unwrap();
        rig.guest_sends(&credit, &[]);
    }
    feeder.join().unwrap();
    assert!(got == payload, "host → guest stream corrupted");

    // Guest → host in packets of up to 64 KiB, never beyond the device's credit, while the
    // host reads on another thread: exercises buffering, EPOLLOUT and credit updates.
    let mut reader = client;
    let expected = payload.len();
    let drain = std::thread::spawn(move || {
        let mut out = vec![0u8; expected];
        reader.read_exact(&mut out).unwrap();
        out
    });
    let (mut sent, mut host_fwd_cnt, mut updates) = (0usize, 0u32, 0);
    while sent < payload.len() {
        rig.rx.keep_posted(8, 4096);
        rig.host_events();
        for (hdr, _) in rig.received() {
            assert_eq!(hdr.buf_alloc, HOST_BUF_ALLOC);
            host_fwd_cnt = hdr.fwd_cnt;
            updates += 1;
        }
        let in_flight = u32::try_from(sent).unwrap() - host_fwd_cnt;
        let credit = (HOST_BUF_ALLOC - in_flight) as usize;
        let n = credit.min(MAX_PKT_DATA as usize).min(payload.len() - sent);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        rig.guest_sends(
            &guest_header(Op::Rw, GUEST_PORT, host_port),
            &payload[sent..sent + n],
        );
        sent += n;
    }
    // Keep serving the host socket until the reader has everything.
    while !drain.is_finished() {
        rig.host_events();
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = drain.join().unwrap();
    assert!(out == payload, "guest → host stream corrupted");
    assert!(updates > 0, "the device returned credit");
}

/// Runs `f` on a thread and fails the test if it does not return within a few seconds:
/// a spinning device loop becomes a test failure instead of a hung test run.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(Duration::from_secs(5))
        .expect("the device loop did not return: it spins on a corrupt queue")
}

/// A driver that moves the available index more than a ring ahead: virtio-queue refuses
/// to iterate, and the device must report the queue corrupt instead of asking again.
#[test]
fn avail_index_beyond_the_ring_needs_reset_instead_of_spinning() {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(guest_memory()));
    let mut rig = Rig::new(mem);
    let (mut client, _) = rig.connect();
    // Host data waiting for the guest: RX has work to do.
    client.write_all(b"for the guest").unwrap();
    rig.tx.set_avail_idx(QUEUE_SIZE_FOR_TESTS + 7);
    rig.rx.set_avail_idx(QUEUE_SIZE_FOR_TESTS * 3);
    let Rig {
        mut device,
        mut txq,
        mut rxq,
        dir,
        ..
    } = rig;
    let (tx, rx) = bounded(move || {
        for _ in 0..3 {
            device.process_host_events();
        }
        let tx = device.process_tx(mem, &mut txq);
        let rx = device.process_rx(mem, &mut rxq);
        drop(dir);
        (tx, rx)
    });
    for (name, outcome) in [("tx", tx), ("rx", rx)] {
        match outcome {
            Err(e) if e.needs_reset() => {}
            other => panic!("{name}: a corrupt available index gave {other:?}"),
        }
    }
}
