//! One connection's state machine: handshakes, credit, shutdowns and resets.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::*;
use crate::credit::HOST_BUF_ALLOC;
use crate::packet::SHUTDOWN_BOTH;
use crate::packet::{HOST_CID, Op, SHUTDOWN_SEND};
use crate::test_utils::{GUEST_CID, HostPacket, guest_header};

const HOST_PORT: u32 = 1 << 30;
const GUEST_PORT: u32 = 1024;

fn key() -> ConnKey {
    ConnKey {
        local_port: HOST_PORT,
        peer_port: GUEST_PORT,
    }
}

/// (host client end, device end).
fn sockets() -> (UnixStream, UnixStream) {
    let (client, device) = UnixStream::pair().unwrap();
    device.set_nonblocking(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    (client, device)
}

fn established(peer_buf_alloc: u32) -> (UnixStream, Connection) {
    let (client, device) = sockets();
    let mut request = guest_header(Op::Request, GUEST_PORT, HOST_PORT);
    request.buf_alloc = peer_buf_alloc;
    let mut conn = Connection::guest_initiated(key(), GUEST_CID, device, &request);
    let (hdr, _) = conn.produce_rx::<()>(None).unwrap();
    assert_eq!(hdr.op(), Some(Op::Response));
    (client, conn)
}

fn guest_sends(conn: &mut Connection, op: Op, flags: u32, data: &[u8]) -> GuestVerdict {
    let mut hdr = guest_header(op, GUEST_PORT, HOST_PORT);
    hdr.flags = flags;
    let mut buf = HostPacket::new(&hdr, data);
    let pkt = buf.packet();
    conn.on_guest_packet(&Header::from_packet(&pkt), pkt.data_slice())
}

/// The next packet for the guest, with its payload.
fn next_rx(conn: &mut Connection, capacity: usize) -> Option<(Header, Vec<u8>)> {
    let mut buf = HostPacket::rx(capacity);
    let (hdr, len) = {
        let pkt = buf.packet();
        conn.produce_rx(pkt.data_slice())?
    };
    Some((hdr, buf.data(len).to_vec()))
}

#[test]
fn host_initiated_handshake_sends_request_then_ok_line() {
    let (mut client, device) = sockets();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut conn = Connection::host_initiated(key(), GUEST_CID, device, deadline);
    assert!(conn.has_rx_work());
    assert!(
        conn.wanted_events().is_empty(),
        "no host reads before the guest accepts"
    );
    let (hdr, _) = conn.produce_rx::<()>(None).unwrap();
    assert_eq!(hdr.op(), Some(Op::Request));
    assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((hdr.src_port, hdr.dst_port), (HOST_PORT, GUEST_PORT));
    assert_eq!(hdr.buf_alloc, HOST_BUF_ALLOC);
    assert!(!conn.has_rx_work());

    assert_eq!(
        guest_sends(&mut conn, Op::Response, 0, &[]),
        GuestVerdict::Keep
    );
    assert_eq!(conn.state(), State::Established);
    assert_eq!(conn.deadline(), None);
    let mut line = [0u8; 32];
    let n = client.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {HOST_PORT}\n").as_bytes());
    assert!(conn.wanted_events().contains(EventSet::IN));
}

#[test]
fn guest_refusal_removes_the_connection() {
    let (_client, device) = sockets();
    let mut conn = Connection::host_initiated(key(), GUEST_CID, device, Instant::now());
    conn.produce_rx::<()>(None).unwrap();
    assert_eq!(
        guest_sends(&mut conn, Op::Rst, 0, &[]),
        GuestVerdict::Remove
    );
}

#[test]
fn guest_data_reaches_the_host_in_order_even_when_the_socket_is_full() {
    let (mut client, mut conn) = established(64 * 1024);
    let chunk = vec![0xabu8; 32 * 1024];
    let mut sent = 0;
    // Send until the socket refuses and bytes pile up in the host buffer.
    while conn.wanted_events().is_empty() || !conn.wanted_events().contains(EventSet::OUT) {
        guest_sends(&mut conn, Op::Rw, 0, &chunk);
        sent += chunk.len();
        assert_eq!(conn.state(), State::Established);
    }
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < sent {
        got += client.read(&mut buf).unwrap();
        conn.on_host_writable();
    }
    assert_eq!(got, sent);
    assert!(!conn.wanted_events().contains(EventSet::OUT));
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let (_client, mut conn) = established(64 * 1024);
    let chunk = vec![1u8; 64 * 1024];
    // The client never reads: the socket fills, then the window; one more byte is a violation.
    for _ in 0..64 {
        guest_sends(&mut conn, Op::Rw, 0, &chunk);
        if conn.state() == State::Reset {
            break;
        }
    }
    assert_eq!(conn.state(), State::Reset);
    let (hdr, _) = next_rx(&mut conn, 0).unwrap();
    assert_eq!(hdr.op(), Some(Op::Rst));
    assert!(conn.is_finished());
}

#[test]
fn host_data_is_bounded_by_guest_credit() {
    let (mut client, mut conn) = established(8);
    client.write_all(&[7u8; 100]).unwrap();
    conn.on_host_readable();
    let (hdr, data) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!((hdr.op(), hdr.len), (Some(Op::Rw), 8));
    assert_eq!(data, vec![7u8; 8]);
    // Out of credit with data waiting: ask once, then stay quiet.
    let (hdr, _) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!(hdr.op(), Some(Op::CreditRequest));
    assert!(next_rx(&mut conn, 4096).is_none());
    assert!(!conn.wanted_events().contains(EventSet::IN));

    let mut update = guest_header(Op::CreditUpdate, GUEST_PORT, HOST_PORT);
    update.buf_alloc = 8;
    update.fwd_cnt = 8;
    let mut buf = HostPacket::new(&update, &[]);
    let pkt = buf.packet();
    conn.on_guest_packet(&Header::from_packet(&pkt), pkt.data_slice());
    let (hdr, _) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!((hdr.op(), hdr.len), (Some(Op::Rw), 8));
}

#[test]
fn host_eof_becomes_a_shutdown_after_the_data() {
    let (mut client, mut conn) = established(64 * 1024);
    client.write_all(b"bye").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    conn.on_host_readable();
    let (hdr, data) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!((hdr.op(), data.as_slice()), (Some(Op::Rw), &b"bye"[..]));
    // A short read ends the readable streak; epoll reports the EOF next.
    assert!(conn.wanted_events().contains(EventSet::IN));
    conn.on_host_readable();
    let (hdr, _) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!((hdr.op(), hdr.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    assert!(conn.wanted_events().is_empty());
    assert!(!conn.has_rx_work());
}

#[test]
fn guest_close_is_answered_with_rst_and_closes_the_host() {
    let (mut client, mut conn) = established(64 * 1024);
    guest_sends(&mut conn, Op::Rw, 0, b"last words");
    guest_sends(&mut conn, Op::Shutdown, SHUTDOWN_BOTH, &[]);
    assert_eq!(conn.state(), State::Reset);
    let (hdr, _) = next_rx(&mut conn, 0).unwrap();
    assert_eq!(hdr.op(), Some(Op::Rst));
    conn.close_host();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn guest_send_shutdown_half_closes_the_host_socket() {
    let (mut client, mut conn) = established(64 * 1024);
    guest_sends(&mut conn, Op::Shutdown, SHUTDOWN_SEND, &[]);
    assert_eq!(conn.state(), State::Established);
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "host sees EOF");
    // The other direction still works.
    client.write_all(b"still here").unwrap();
    conn.on_host_readable();
    let (hdr, data) = next_rx(&mut conn, 4096).unwrap();
    assert_eq!(
        (hdr.op(), data.as_slice()),
        (Some(Op::Rw), &b"still here"[..])
    );
    // Data after the guest promised not to send is a protocol violation.
    guest_sends(&mut conn, Op::Rw, 0, b"x");
    assert_eq!(conn.state(), State::Reset);
}

#[test]
fn credit_request_is_answered_with_an_update() {
    let (_client, mut conn) = established(64 * 1024);
    guest_sends(&mut conn, Op::CreditRequest, 0, &[]);
    let (hdr, _) = next_rx(&mut conn, 0).unwrap();
    assert_eq!(hdr.op(), Some(Op::CreditUpdate));
    assert_eq!(hdr.buf_alloc, HOST_BUF_ALLOC);
}

#[test]
fn protocol_violations_reset_the_connection() {
    for op in [Op::Request, Op::Response] {
        let (_client, mut conn) = established(4096);
        guest_sends(&mut conn, op, 0, &[]);
        assert_eq!(conn.state(), State::Reset, "{op:?}");
    }
    let (_client, mut conn) = established(4096);
    let mut hdr = guest_header(Op::Rw, GUEST_PORT, HOST_PORT);
    hdr.op = 99;
    let mut buf = HostPacket::new(&hdr, &[]);
    let pkt = buf.packet();
    conn.on_guest_packet(&Header::from_packet(&pkt), pkt.data_slice());
    assert_eq!(conn.state(), State::Reset, "unknown op");

    let (_client, device) = sockets();
    let mut conn = Connection::host_initiated(key(), GUEST_CID, device, Instant::now());
    guest_sends(&mut conn, Op::Rw, 0, b"too early");
    assert_eq!(conn.state(), State::Reset, "data before the handshake");
}

#[test]
fn vanished_host_client_resets_on_write() {
    let (client, mut conn) = established(64 * 1024);
    drop(client);
    guest_sends(&mut conn, Op::Rw, 0, b"anyone?");
    assert_eq!(conn.state(), State::Reset);
}
