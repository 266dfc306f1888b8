//! One vsock stream connection between a host Unix socket and a guest port.
//!
//! The connection owns the host socket and decides, from guest packets and host readiness,
//! what it owes the guest next ([`Connection::produce_rx`]) and which host events it needs
//! ([`Connection::wanted_events`]). It never blocks and never buffers more than the credit
//! window; all guest misbehaviour ends in a reset of this connection only.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::credit::Credit;
use super::host_buffer::HostBuffer;
use super::packet::Header;

/// Default for [`Connection::with_drain_timeout`].
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies a connection: host-side port and guest-side port (the guest CID is fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: our REQUEST is queued or sent, the guest has not answered yet.
    Connecting,
    Established,
    /// Reset: an RST is owed to the guest and the host socket is to be closed; the connection
    /// is removed once the RST went out.
    Reset,
}

/// What a guest packet did to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestVerdict {
    Keep,
    /// The guest reset the connection: forget it without answering.
    Remove,
}

#[derive(Debug)]
pub struct Connection {
    key: ConnKey,
    guest_cid: u64,
    state: State,
    /// `None` once the host side is closed (after a reset).
    stream: Option<UnixStream>,
    credit: Credit,
    host_buffer: HostBuffer,
    /// Reset when it passes: handshake or close that the guest never finished.
    deadline: Option<Instant>,
    /// How long the host gets to take buffered data after the guest closed.
    drain_timeout: Duration,
    send_request: bool,
    send_response: bool,
    /// The guest asked for our credit (CREDIT_REQUEST).
    send_credit_update: bool,
    /// We are out of guest credit with host data waiting and have asked for more.
    asked_for_credit: bool,
    /// SHUTDOWN flags owed to the guest (0: none).
    send_shutdown: u32,
    rst_sent: bool,
    /// epoll said the host socket has data (or EOF) we have not consumed yet.
    host_readable: bool,
    /// The host side will not send any more (read returned 0).
    host_eof: bool,
    /// We shut down the write half of the host socket (guest said it will not send).
    host_write_shut: bool,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
}

impl Connection {
    /// A host client asked for guest port `key.peer_port`; the REQUEST is owed to the guest.
    pub fn host_initiated(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        deadline: Instant,
    ) -> Self {
        let mut conn = Self::new(key, guest_cid, stream, State::Connecting);
        conn.send_request = true;
        conn.deadline = Some(deadline);
        conn
    }

    /// The guest connected to host port `key.local_port` and we reached the forward socket;
    /// the RESPONSE is owed to the guest. `peer` is the guest's REQUEST header.
    pub fn guest_initiated(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        peer: &Header,
    ) -> Self {
        let mut conn = Self::new(key, guest_cid, stream, State::Established);
        conn.credit.update_peer(peer.buf_alloc, peer.fwd_cnt);
        conn.send_response = true;
        conn
    }

    fn new(key: ConnKey, guest_cid: u64, stream: UnixStream, state: State) -> Self {
        Self {
            key,
            guest_cid,
            state,
            stream: Some(stream),
            credit: Credit::default(),
            host_buffer: HostBuffer::default(),
            deadline: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            asked_for_credit: false,
            send_shutdown: 0,
            rst_sent: false,
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
        }
    }

    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> Option<&UnixStream> {
        self.stream.as_ref()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Done: reset and the RST delivered. The muxer drops it.
    pub fn is_finished(&self) -> bool {
        self.state == State::Reset && self.rst_sent
    }

    /// Resets the connection: RST to the guest, host socket to be closed.
    pub fn kill(&mut self) {
        self.state = State::Reset;
        self.deadline = None;
        self.host_buffer.clear();
    }

    /// Closes the host socket (the muxer calls this after removing it from epoll).
    pub fn close_host(&mut self) {
        self.stream = None;
    }

    /// Host events this connection needs now (empty: stop watching the socket).
    pub fn wanted_events(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.state != State::Established || self.stream.is_none() {
            return events;
        }
        if !self.host_readable && self.may_read_host() && self.credit.peer_credit() > 0 {
            events |= EventSet::IN;
        }
        if !self.host_buffer.is_empty() {
            events |= EventSet::OUT;
        }
        events
    }

    fn may_read_host(&self) -> bool {
        !self.host_eof && !self.guest_shut_rcv
    }

    fn can_send_data(&self) -> bool {
        self.host_readable && self.may_read_host() && self.credit.peer_credit() > 0
    }

    fn wants_credit(&self) -> bool {
        self.host_readable
            && self.may_read_host()
            && self.credit.peer_credit() == 0
            && !self.asked_for_credit
    }
}

mod handlers;
#[cfg(test)]
mod tests;
mod to_guest;
