//! The muxer against host clients and guest packets: forwarding, limits, refusals.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::sleep;

use super::*;
use crate::hybrid_socket::forward_path;
use crate::packet::{SHUTDOWN_BOTH, SHUTDOWN_SEND};
use crate::test_utils::{GUEST_CID, HostPacket, guest_header, logger};

const GUEST_PORT: u32 = 1024;

struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    muxer: Muxer,
}

fn quick_config() -> MuxerConfig {
    MuxerConfig {
        connect_line_timeout: Duration::from_millis(60),
        connect_response_timeout: Duration::from_millis(60),
        close_drain_timeout: Duration::from_millis(60),
        tick: Duration::from_millis(10),
        ..MuxerConfig::default()
    }
}

impl Harness {
    fn new(config: MuxerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let muxer = Muxer::new(GUEST_CID, &uds, config, logger()).unwrap();
        Self {
            _dir: dir,
            uds,
            muxer,
        }
    }

    fn client(&self, line: &[u8]) -> UnixStream {
        let mut client = UnixStream::connect(&self.uds).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(line).unwrap();
        client
    }

    /// Lets the muxer handle host events (accept, then the client's bytes).
    fn pump(&mut self) {
        for _ in 0..3 {
            self.muxer.handle_host_events();
        }
    }

    /// Everything the muxer wants to send to the guest.
    fn rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut buf = HostPacket::rx(4096);
            let filled = {
                let mut pkt = buf.packet();
                self.muxer.fill_rx(&mut pkt)
            };
            let Some(len) = filled else {
                return out;
            };
            let hdr = buf.header();
            assert_eq!(len, HEADER_LEN + hdr.len);
            out.push((hdr, buf.data(hdr.len).to_vec()));
        }
    }

    fn guest(&mut self, hdr: &Header, data: &[u8]) {
        let mut buf = HostPacket::new(hdr, data);
        let pkt = buf.packet();
        self.muxer.handle_guest_packet(&pkt);
    }

    /// CONNECT to the guest port, accepted by the guest. Returns the client and the host port.
    fn connected_client(&mut self) -> (UnixStream, u32) {
        let mut client = self.client(format!("CONNECT {GUEST_PORT}\n").as_bytes());
        self.pump();
        let rx = self.rx();
        assert_eq!(rx.len(), 1);
        let request = rx[0].0;
        assert_eq!(request.op(), Some(Op::Request));
        assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(request.dst_port, GUEST_PORT);
        assert!(request.src_port >= LOCAL_PORT_BASE);
        self.guest(
            &guest_header(Op::Response, GUEST_PORT, request.src_port),
            &[],
        );
        let mut line = [0u8; 32];
        let n = client.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {}\n", request.src_port).as_bytes());
        (client, request.src_port)
    }
}

/// The device closed the client: EOF, or ECONNRESET when it left bytes unread.
fn assert_closed(client: &mut UnixStream) {
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "expected EOF"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn host_connection_carries_bytes_both_ways() {
    let mut h = Harness::new(MuxerConfig::default());
    let (mut client, host_port) = h.connected_client();
    client.write_all(b"ping").unwrap();
    h.pump();
    let rx = h.rx();
    assert_eq!(rx.len(), 1);
    assert_eq!(
        (rx[0].0.op(), rx[0].1.as_slice()),
        (Some(Op::Rw), &b"ping"[..])
    );
    assert_eq!(rx[0].0.src_port, host_port);

    h.guest(&guest_header(Op::Rw, GUEST_PORT, host_port), b"pong");
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn guest_refusal_closes_the_client() {
    let mut h = Harness::new(MuxerConfig::default());
    let mut client = h.client(b"CONNECT 99\n");
    h.pump();
    let request = h.rx()[0].0;
    h.guest(&guest_header(Op::Rst, 99, request.src_port), &[]);
    assert_closed(&mut client);
    assert_eq!(h.muxer.connection_count(), 0);
    assert!(h.rx().is_empty(), "no RST answers an RST");
}

#[test]
fn unanswered_request_times_out_with_rst() {
    let mut h = Harness::new(quick_config());
    let mut client = h.client(b"CONNECT 1024\n");
    h.pump();
    let request = h.rx()[0].0;
    sleep(Duration::from_millis(120));
    h.pump();
    assert_closed(&mut client);
    let rx = h.rx();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op(), Some(Op::Rst));
    assert_eq!(rx[0].0.src_port, request.src_port);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn bad_connect_lines_close_only_that_client() {
    let mut h = Harness::new(quick_config());
    let mut garbage = h.client(b"HELLO\n");
    let mut long = h.client(&[b'9'; 64]);
    let mut not_a_number = h.client(b"CONNECT 12a\n");
    let mut silent = h.client(b"CONN");
    h.pump();
    assert_closed(&mut garbage);
    assert_closed(&mut long);
    assert_closed(&mut not_a_number);
    sleep(Duration::from_millis(120));
    h.pump();
    assert_closed(&mut silent);
    assert!(h.rx().is_empty(), "the guest never heard of them");
    assert_eq!(h.muxer.connection_count(), 0);
    // The device still serves well-behaved clients.
    let mut ok = h.client(b"CONNECT 5\n");
    h.pump();
    assert_eq!(h.rx()[0].0.op(), Some(Op::Request));
    let mut buf = [0u8; 1];
    ok.set_nonblocking(true).unwrap();
    assert!(
        ok.read(&mut buf).is_err(),
        "still open, waiting for the guest"
    );
}

#[test]
fn guest_connections_are_forwarded_to_port_sockets() {
    let mut h = Harness::new(MuxerConfig::default());
    let server = UnixListener::bind(forward_path(&h.uds, 5000)).unwrap();
    h.guest(&guest_header(Op::Request, 7777, 5000), &[]);
    let (mut conn, _) = server.accept().unwrap();
    let rx = h.rx();
    assert_eq!(rx.len(), 1);
    let response = rx[0].0;
    assert_eq!(response.op(), Some(Op::Response));
    assert_eq!((response.src_port, response.dst_port), (5000, 7777));

    conn.write_all(b"hi guest").unwrap();
    h.pump();
    let rx = h.rx();
    assert_eq!(rx[0].1, b"hi guest");
    h.guest(&guest_header(Op::Rw, 7777, 5000), b"hi host");
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi host");
}

#[test]
fn guest_connection_without_listener_is_reset() {
    let mut h = Harness::new(MuxerConfig::default());
    h.guest(&guest_header(Op::Request, 7777, 6000), &[]);
    let rx = h.rx();
    assert_eq!(rx.len(), 1);
    let rst = rx[0].0;
    assert_eq!(rst.op(), Some(Op::Rst));
    assert_eq!(
        (rst.src_port, rst.dst_port, rst.dst_cid),
        (6000, 7777, GUEST_CID)
    );
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn stray_packets_are_reset_or_dropped() {
    let mut h = Harness::new(MuxerConfig::default());
    h.guest(&guest_header(Op::Rw, 1, 2), b"data");
    h.guest(&guest_header(Op::Rst, 1, 2), &[]);
    let mut spoofed = guest_header(Op::Request, 1, 2);
    spoofed.src_cid = 77;
    h.guest(&spoofed, &[]);
    let mut other_cid = guest_header(Op::Request, 1, 2);
    other_cid.dst_cid = 5;
    h.guest(&other_cid, &[]);
    let mut seqpacket = guest_header(Op::Request, 1, 2);
    seqpacket.type_ = 2;
    h.guest(&seqpacket, &[]);
    let ops: Vec<_> = h.rx().iter().map(|(hdr, _)| hdr.op()).collect();
    assert_eq!(ops, vec![Some(Op::Rst); 3], "RW, other CID, other type");
}

#[test]
fn orphan_resets_are_bounded() {
    let mut h = Harness::new(MuxerConfig::default());
    for port in 0..3000 {
        h.guest(&guest_header(Op::Rw, port, 1), b"x");
    }
    assert_eq!(h.rx().len(), MAX_ORPHAN_RSTS);
}

#[test]
fn connection_limit_closes_extra_clients() {
    let mut h = Harness::new(MuxerConfig {
        max_connections: 2,
        ..MuxerConfig::default()
    });
    let _a = h.client(b"CONNECT 1\n");
    let _b = h.client(b"CONNECT 2\n");
    let mut c = h.client(b"CONNECT 3\n");
    h.pump();
    assert_closed(&mut c);
    assert_eq!(h.muxer.connection_count(), 2);
    h.guest(&guest_header(Op::Request, 9, 9), &[]);
    let rsts = h
        .rx()
        .iter()
        .filter(|(hdr, _)| hdr.op() == Some(Op::Rst))
        .count();
    assert_eq!(rsts, 1, "guest connection over the limit");
}

#[test]
fn client_close_then_guest_close_removes_the_connection() {
    let mut h = Harness::new(MuxerConfig::default());
    let (client, host_port) = h.connected_client();
    drop(client);
    h.pump();
    let rx = h.rx();
    assert_eq!(rx.len(), 1);
    assert_eq!(
        (rx[0].0.op(), rx[0].0.flags),
        (Some(Op::Shutdown), SHUTDOWN_SEND)
    );
    let mut shutdown = guest_header(Op::Shutdown, GUEST_PORT, host_port);
    shutdown.flags = SHUTDOWN_BOTH;
    h.guest(&shutdown, &[]);
    let rx = h.rx();
    assert_eq!(rx[0].0.op(), Some(Op::Rst));
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn reset_closes_every_client() {
    let mut h = Harness::new(MuxerConfig::default());
    let (mut established, _) = h.connected_client();
    let mut pending = h.client(b"CONN");
    h.pump();
    h.muxer.reset();
    assert_closed(&mut established);
    assert_closed(&mut pending);
    assert_eq!(h.muxer.connection_count(), 0);
    assert!(!h.muxer.has_rx_work());
}
