//! How a connection reacts to guest packets and to host socket readiness.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::time::Instant;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::{Connection, GuestVerdict, State};
use crate::hybrid_socket::ok_line;
use crate::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};

impl Connection {
    /// Applies a guest packet addressed to this connection.
    pub fn on_guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> GuestVerdict {
        let op = hdr.op();
        if op == Some(Op::Rst) {
            return GuestVerdict::Remove;
        }
        if self.state == State::Reset {
            // Our RST is on its way; nothing the guest says now matters.
            return GuestVerdict::Keep;
        }
        self.credit.update_peer(hdr.buf_alloc, hdr.fwd_cnt);
        if self.credit.peer_credit() > 0 {
            self.asked_for_credit = false;
        }
        match (op, self.state) {
            (Some(Op::Response), State::Connecting) => self.on_response(),
            (Some(Op::Rw), State::Established) => self.on_guest_data(hdr.len, data),
            (Some(Op::Shutdown), State::Established) => {
                self.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.after_host_write();
            }
            (Some(Op::CreditUpdate), State::Established) => {}
            (Some(Op::CreditRequest), State::Established) => self.send_credit_update = true,
            // Duplicate REQUEST, RESPONSE out of place, data before the handshake, unknown op.
            _ => self.kill(),
        }
        GuestVerdict::Keep
    }

    fn on_response(&mut self) {
        let line = ok_line(self.key.local_port);
        let written = self.stream.as_ref().map(|mut s| s.write(line.as_bytes()));
        match written {
            // A fresh socket has room for a 16-byte line; anything short means the client broke.
            Some(Ok(n)) if n == line.len() => {
                self.state = State::Established;
                self.deadline = None;
            }
            _ => self.kill(),
        }
    }

    fn on_guest_data<B: BitmapSlice>(&mut self, len: u32, data: Option<&VolatileSlice<'_, B>>) {
        let Some(data) = data.filter(|_| len > 0) else {
            return;
        };
        if self.guest_shut_send
            || self.host_write_shut
            || self.credit.accept_from_guest(len).is_err()
        {
            self.kill();
            return;
        }
        let mut written = 0;
        if self.host_buffer.is_empty() {
            let Some(mut stream) = self.stream.as_ref() else {
                return;
            };
            match stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.kill();
                    return;
                }
            }
        }
        if written < data.len() {
            match data.offset(written) {
                Ok(rest) => self.host_buffer.push_volatile(&rest),
                Err(_) => self.kill(),
            }
        }
        self.credit
            .on_forwarded_to_host(u32::try_from(written).unwrap_or(len));
    }

    /// epoll: the host socket has data or EOF (or hung up).
    pub fn on_host_readable(&mut self) {
        if self.state == State::Established && self.may_read_host() {
            self.host_readable = true;
        }
    }

    /// epoll: the host socket has room again.
    pub fn on_host_writable(&mut self) {
        let Some(mut stream) = self.stream.as_ref() else {
            return;
        };
        match self.host_buffer.flush_to(&mut stream) {
            Ok(n) => {
                self.credit
                    .on_forwarded_to_host(u32::try_from(n).unwrap_or(u32::MAX));
                self.after_host_write();
            }
            Err(_) => self.kill(),
        }
    }

    /// Finishes what the guest's SHUTDOWN asked for once its data reached the host.
    fn after_host_write(&mut self) {
        if !self.host_buffer.is_empty() {
            if self.guest_shut_send && self.guest_shut_rcv && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.drain_timeout);
            }
            return;
        }
        if self.guest_shut_send && self.guest_shut_rcv {
            // Linux waits for our RST before it releases a closed socket.
            self.kill();
        } else if self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            if let Some(stream) = self.stream.as_ref() {
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    }
}
