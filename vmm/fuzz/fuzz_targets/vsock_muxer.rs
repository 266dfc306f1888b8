//! The vsock device end to end with both sides hostile: host clients write arbitrary bytes
//! (CONNECT lines or not) and hang up; the guest sends arbitrary packet headers and payloads
//! through a TX queue in guest memory, answers host requests, and posts receive buffers.
//! Nothing may panic, hang or grow without bound.
#![no_main]

#[path = "../common/deadline.rs"]
mod deadline;

#[path = "../common/ring.rs"]
mod ring;

use std::io::Write;
use std::os::unix::net::UnixStream;

use husk_vsock::VsockDevice;
use husk_vsock::packet::{HEADER_SIZE, HOST_CID, Header, Op, TYPE_STREAM};
use libfuzzer_sys::fuzz_target;
use ring::Ring;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GUEST_CID: u64 = 3;
const MEM: usize = 4 << 20;
const TX_BUF: u64 = 1 << 20;
const RX_BUF: u64 = 2 << 20;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Some(u32::from_le_bytes(v))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let _deadline = deadline::Deadline::arm();
    let Ok(dir) = tempfile::tempdir() else { return };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let uds = dir.path().join("v.sock");
    let Ok(mut device) = VsockDevice::new(GUEST_CID, &uds, log) else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let (mut rx, mut tx) = (Ring::new(0), Ring::new(0x1_0000));
    let (mut rxq, mut txq) = (rx.queue(), tx.queue());
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut last_request: Option<Header> = None;
    let mut input = Input(data);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        match op % 7 {
            0 if clients.len() < 8 => {
                if let Ok(mut c) = UnixStream::connect(&uds) {
                    let _ = c.set_nonblocking(true);
                    let n = usize::from(input.byte().unwrap_or(0) % 40);
                    let _ = c.write(input.bytes(n));
                    clients.push(c);
                }
            }
            1 if !clients.is_empty() => {
                let i = usize::from(input.byte().unwrap_or(0)) % clients.len();
                let n = usize::from(input.byte().unwrap_or(0));
                let _ = clients[i].write(input.bytes(n));
            }
            2 if !clients.is_empty() => {
                let i = usize::from(input.byte().unwrap_or(0)) % clients.len();
                clients.swap_remove(i);
            }
            3 => {
                device.process_host_events();
                let _ = device.process_rx(&mem, &mut rxq);
                // Read what the device produced, remembering host requests to answer.
                for i in 0..4u64 {
                    let mut hdr = [0u8; HEADER_SIZE];
                    if mem
                        .read_slice(&mut hdr, GuestAddress(RX_BUF + i * 0x1_0000))
                        .is_ok()
                    {
                        let h = parse(&hdr);
                        if h.op == Op::Request.to_wire() {
                            last_request = Some(h);
                        }
                    }
                }
            }
            4 => {
                // A guest packet with fuzzed fields, header and payload in one or two buffers.
                let mut h = Header {
                    src_cid: if input.byte().unwrap_or(0) == 0xff {
                        7
                    } else {
                        GUEST_CID
                    },
                    dst_cid: HOST_CID,
                    src_port: input.u32().unwrap_or(0),
                    dst_port: input.u32().unwrap_or(0),
                    len: 0,
                    type_: TYPE_STREAM,
                    op: u16::from(input.byte().unwrap_or(0) % 9),
                    flags: input.u32().unwrap_or(0),
                    buf_alloc: input.u32().unwrap_or(0),
                    fwd_cnt: input.u32().unwrap_or(0),
                };
                let payload = input
                    .bytes(usize::from(input.0.first().copied().unwrap_or(0)) * 4)
                    .to_vec();
                h.len = input.u32().unwrap_or(payload.len() as u32);
                let _ = mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUF));
                let _ = mem.write_slice(&payload, GuestAddress(TX_BUF + 0x1000));
                let split = input.byte().unwrap_or(0) & 1 == 0;
                if split {
                    tx.post(
                        &mem,
                        &[
                            (TX_BUF, HEADER_SIZE as u32, false),
                            (TX_BUF + 0x1000, payload.len() as u32, false),
                        ],
                    );
                } else {
                    tx.post(
                        &mem,
                        &[(TX_BUF, (HEADER_SIZE + payload.len()) as u32, false)],
                    );
                }
                let _ = device.process_tx(&mem, &mut txq);
            }
            5 => {
                if let Some(req) = last_request.take() {
                    let h = Header {
                        src_cid: GUEST_CID,
                        dst_cid: HOST_CID,
                        src_port: req.dst_port,
                        dst_port: req.src_port,
                        len: 0,
                        type_: TYPE_STREAM,
                        op: Op::Response.to_wire(),
                        flags: 0,
                        buf_alloc: 65536,
                        fwd_cnt: 0,
                    };
                    let _ = mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUF));
                    tx.post(&mem, &[(TX_BUF, HEADER_SIZE as u32, false)]);
                    let _ = device.process_tx(&mem, &mut txq);
                }
            }
            _ => {
                // Receive buffers, sometimes with odd sizes or addresses.
                let i = u64::from(input.byte().unwrap_or(0) % 4);
                let size = u32::from(input.byte().unwrap_or(0)) * 64;
                let base = RX_BUF + i * 0x1_0000;
                if size == 0 {
                    rx.post(
                        &mem,
                        &[(u64::from(input.u32().unwrap_or(0)) << 12, 44, true)],
                    );
                } else {
                    rx.post(
                        &mem,
                        &[
                            (base, HEADER_SIZE as u32, true),
                            (base + 0x1000, size, true),
                        ],
                    );
                }
                let _ = device.process_rx(&mem, &mut rxq);
            }
        }
    }
    device.reset();
});

fn parse(b: &[u8; HEADER_SIZE]) -> Header {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2"));
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
