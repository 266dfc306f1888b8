//! What a connection sends the guest next: handshake, data read straight from the host socket
//! into the guest's buffer (bounded by the guest's credit), shutdown, credit messages, RST.

use std::io::ErrorKind;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

use super::{Connection, State};
use crate::packet::{HOST_CID, Header, Op, SHUTDOWN_SEND, TYPE_STREAM};

impl Connection {
    /// Whether the connection has a packet for the guest.
    pub fn has_rx_work(&self) -> bool {
        match self.state {
            State::Reset => !self.rst_sent,
            State::Connecting => self.send_request,
            State::Established => {
                self.send_response
                    || self.can_send_data()
                    || self.send_shutdown != 0
                    || self.send_credit_update
                    || self.credit.needs_update()
                    || self.wants_credit()
            }
        }
    }

    /// Produces the next packet for the guest. Payload (host socket data) is read straight into
    /// `data`, the guest's receive buffer. Returns the header to write and the payload length,
    /// or `None` if there turned out to be nothing to send.
    pub fn produce_rx<B: BitmapSlice>(
        &mut self,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Option<(Header, u32)> {
        match self.state {
            State::Reset if !self.rst_sent => {
                self.rst_sent = true;
                return Some((self.header(Op::Rst, 0, 0), 0));
            }
            State::Reset => return None,
            State::Connecting if self.send_request => {
                self.send_request = false;
                return Some((self.header(Op::Request, 0, 0), 0));
            }
            State::Connecting => return None,
            State::Established => {}
        }
        if self.send_response {
            self.send_response = false;
            return Some((self.header(Op::Response, 0, 0), 0));
        }
        if self.can_send_data() {
            if let Some(data) = data {
                if let Some(packet) = self.read_host_into(data) {
                    return Some(packet);
                }
                if self.state == State::Reset {
                    return self.produce_rx(Some(data));
                }
            }
        }
        if self.send_shutdown != 0 {
            let flags = std::mem::take(&mut self.send_shutdown);
            return Some((self.header(Op::Shutdown, 0, flags), 0));
        }
        if self.send_credit_update || self.credit.needs_update() {
            self.send_credit_update = false;
            return Some((self.header(Op::CreditUpdate, 0, 0), 0));
        }
        if self.wants_credit() {
            self.asked_for_credit = true;
            return Some((self.header(Op::CreditRequest, 0, 0), 0));
        }
        None
    }

    /// One read from the host socket into the guest buffer, bounded by the guest's credit.
    fn read_host_into<B: BitmapSlice>(
        &mut self,
        data: &VolatileSlice<'_, B>,
    ) -> Option<(Header, u32)> {
        let limit = data.len().min(self.credit.peer_credit() as usize);
        if limit == 0 {
            // A zero-length read would look like EOF.
            return None;
        }
        let mut window = data.subslice(0, limit).ok()?;
        let mut stream = self.stream.as_ref()?;
        match stream.read_volatile(&mut window) {
            Ok(0) => {
                // The host will not send more: tell the guest after everything already sent.
                self.host_readable = false;
                self.host_eof = true;
                self.send_shutdown |= SHUTDOWN_SEND;
                None
            }
            Ok(n) => {
                // A full buffer means there is probably more: stay readable and come back.
                self.host_readable = n == limit;
                let n = u32::try_from(n).ok()?;
                self.credit.on_sent_to_guest(n);
                Some((self.header(Op::Rw, n, 0), n))
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(_) => {
                self.kill();
                None
            }
        }
    }

    fn header(&mut self, op: Op, len: u32, flags: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self.credit.stamp();
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op.to_wire(),
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }
}
