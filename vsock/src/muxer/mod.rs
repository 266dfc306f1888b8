//! The connection table: routes guest packets to connections, host socket events to
//! connections, and decides which connection fills the next guest receive buffer.
//!
//! Transport independent: it sees packets (`VsockPacket`) and host fds, never queues or
//! interrupts. Everything here runs on one thread and never blocks.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use slog::{Logger, debug, warn};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{EpollEvent, EventSet};

use super::connection::{ConnKey, Connection, GuestVerdict};
use super::hybrid_socket::{ConnectLineReader, HybridListener, HybridSocketError, connect_forward};
use super::packet::{HEADER_LEN, HOST_CID, Header, Op, TYPE_STREAM};
use super::poller::{Poller, PollerError, TIMER_TOKEN};

/// Connection limit (host clients still handshaking included), as in Firecracker: bounds fds
/// and buffer memory a guest or a host client can pin.
pub const MAX_CONNECTIONS: usize = 1023;

/// Limits and deadlines of the muxer; `Default` holds the production values.
#[derive(Clone, Copy, Debug)]
pub struct MuxerConfig {
    pub max_connections: usize,
    /// A host client must finish its `CONNECT` line within this time.
    pub connect_line_timeout: Duration,
    /// The guest must answer our REQUEST within this time, else the client is closed (it
    /// retries; the guest's listener may simply not be up yet).
    pub connect_response_timeout: Duration,
    /// After the guest closed, the host gets this long to take the data still buffered for it.
    pub close_drain_timeout: Duration,
    /// Granularity of deadline checks; the timer only runs while a deadline is pending.
    pub tick: Duration,
    /// Whether the hybrid socket's file goes with the muxer (false in a jail that may not
    /// unlink; its owner removes it).
    pub remove_socket_on_drop: bool,
}

impl Default for MuxerConfig {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            connect_line_timeout: Duration::from_secs(5),
            connect_response_timeout: Duration::from_secs(2),
            close_drain_timeout: Duration::from_secs(5),
            // Deadlines are seconds long: a quarter second of slack is invisible.
            tick: Duration::from_millis(250),
            remove_socket_on_drop: true,
        }
    }
}

/// RSTs for packets that match no connection, waiting for guest buffers; beyond this they are
/// dropped (the guest times out instead), so a flood cannot grow memory.
const MAX_ORPHAN_RSTS: usize = 1024;
/// Host-initiated connections use local ports from here up (as Firecracker), far from the
/// well-known ports guests connect to.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Events taken per `epoll_wait`; more stay pending (level triggered) for the next call.
const EVENT_BATCH: usize = 64;
/// Clients accepted per listener event, so a connect storm cannot starve the guest.
const ACCEPT_BATCH: usize = 32;
/// The hybrid listener's epoll token; sockets get tokens from `FIRST_SOCKET_TOKEN` up.
const LISTENER_TOKEN: u64 = TIMER_TOKEN + 1;
const FIRST_SOCKET_TOKEN: u64 = LISTENER_TOKEN + 1;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error(transparent)]
    Poller(#[from] PollerError),
    #[error(transparent)]
    Listener(#[from] HybridSocketError),
    #[error("cannot watch the hybrid vsock socket: {0}")]
    WatchListener(std::io::Error),
}

/// A host client that has not completed its `CONNECT` line.
#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    reader: ConnectLineReader,
    deadline: Instant,
}

/// A connection plus the muxer's bookkeeping for it.
#[derive(Debug)]
struct Slot {
    conn: Connection,
    token: u64,
    /// Interest currently registered in epoll (empty: not registered).
    registered: EventSet,
    /// Present in `rx_queue`.
    queued: bool,
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Pending,
    Conn(ConnKey),
}

pub struct Muxer {
    guest_cid: u64,
    config: MuxerConfig,
    poller: Poller,
    listener: HybridListener,
    conns: HashMap<ConnKey, Slot>,
    pending: HashMap<u64, PendingClient>,
    endpoints: HashMap<u64, Endpoint>,
    next_token: u64,
    next_local_port: u32,
    /// Connections with something for the guest, served round robin.
    rx_queue: VecDeque<ConnKey>,
    orphan_rsts: VecDeque<Header>,
    log: Logger,
}

impl Muxer {
    /// Binds the hybrid socket at `uds_path` (which must not exist).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        config: MuxerConfig,
        log: Logger,
    ) -> Result<Self, MuxerError> {
        let poller = Poller::new(config.tick)?;
        let mut listener = HybridListener::bind(uds_path)?;
        if !config.remove_socket_on_drop {
            listener.leave_file_on_drop();
        }
        poller
            .update(
                listener.as_raw_fd(),
                LISTENER_TOKEN,
                EventSet::empty(),
                EventSet::IN,
            )
            .map_err(MuxerError::WatchListener)?;
        Ok(Self {
            guest_cid,
            config,
            poller,
            listener,
            conns: HashMap::new(),
            pending: HashMap::new(),
            endpoints: HashMap::new(),
            next_token: FIRST_SOCKET_TOKEN,
            next_local_port: LOCAL_PORT_BASE,
            rx_queue: VecDeque::new(),
            orphan_rsts: VecDeque::new(),
            log,
        })
    }

    pub fn uds_path(&self) -> &Path {
        self.listener.path()
    }

    /// Live connections plus host clients still handshaking.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Whether a guest receive buffer would be used now.
    pub fn has_rx_work(&self) -> bool {
        !self.orphan_rsts.is_empty() || !self.rx_queue.is_empty()
    }

    /// Handles ready host sockets (call when the fd from `as_raw_fd` is readable).
    pub fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let ready = match self.poller.poll(&mut events) {
            Ok(n) => n,
            Err(e) => {
                warn!(self.log, "vsock epoll failed"; "error" => %e);
                return;
            }
        };
        for event in &events[..ready] {
            match event.data() {
                TIMER_TOKEN => self.on_tick(),
                LISTENER_TOKEN => self.accept_clients(),
                token => self.on_socket_event(token, event.event_set()),
            }
        }
    }

    /// Applies one packet the guest sent (TX queue).
    pub fn handle_guest_packet<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        let hdr = Header::from_packet(pkt);
        if hdr.src_cid != self.guest_cid {
            debug!(self.log, "dropping guest packet with spoofed source"; "src_cid" => hdr.src_cid);
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            debug!(self.log, "refusing guest packet"; "dst_cid" => hdr.dst_cid, "type" => hdr.type_);
            self.queue_orphan_rst(&hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(slot) = self.conns.get_mut(&key) {
            match slot.conn.on_guest_packet(&hdr, pkt.data_slice()) {
                GuestVerdict::Keep => self.refresh(key),
                GuestVerdict::Remove => self.remove(key),
            }
            return;
        }
        match hdr.op() {
            Some(Op::Request) => self.open_guest_connection(key, &hdr),
            Some(Op::Rst) => {}
            _ => {
                debug!(self.log, "guest packet for unknown connection"; "op" => hdr.op, "port" => hdr.dst_port);
                self.queue_orphan_rst(&hdr);
            }
        }
    }

    /// Writes the next packet for the guest into `pkt` (a receive buffer). Returns the bytes
    /// used, or `None` if nothing was written and the buffer must go back to the queue.
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        if let Some(rst) = self.orphan_rsts.pop_front() {
            return self.write_header(&rst, pkt).then_some(HEADER_LEN);
        }
        // One pass over the queue: a connection that cannot use this buffer (say, data waiting
        // and a buffer without a data area) goes back in line and must not be retried forever.
        for _ in 0..self.rx_queue.len() {
            let Some(key) = self.rx_queue.pop_front() else {
                break;
            };
            let Some(slot) = self.conns.get_mut(&key) else {
                continue;
            };
            slot.queued = false;
            let produced = slot.conn.produce_rx(pkt.data_slice());
            self.refresh(key);
            if let Some((hdr, len)) = produced {
                return self.write_header(&hdr, pkt).then_some(HEADER_LEN + len);
            }
        }
        None
    }

    /// Forgets every connection (device reset: the guest lost its side); host clients see EOF.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let tokens: Vec<u64> = self.pending.keys().copied().collect();
        for token in tokens {
            self.drop_pending(token);
        }
        self.rx_queue.clear();
        self.orphan_rsts.clear();
    }

    fn write_header<B: BitmapSlice>(&self, hdr: &Header, pkt: &mut VsockPacket<'_, B>) -> bool {
        match hdr.write_to(pkt) {
            Ok(()) => true,
            Err(e) => {
                debug!(self.log, "cannot write packet header"; "error" => %e);
                false
            }
        }
    }

    fn queue_orphan_rst(&mut self, hdr: &Header) {
        if hdr.op() != Some(Op::Rst) && self.orphan_rsts.len() < MAX_ORPHAN_RSTS {
            self.orphan_rsts.push_back(hdr.reset_reply());
        }
    }

    fn next_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn open_guest_connection(&mut self, key: ConnKey, hdr: &Header) {
        if self.connection_count() >= self.config.max_connections {
            debug!(self.log, "connection limit reached, refusing guest"; "port" => key.local_port);
            self.queue_orphan_rst(hdr);
            return;
        }
        let stream = match connect_forward(self.listener.path(), key.local_port) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(self.log, "guest connection refused"; "error" => %e);
                self.queue_orphan_rst(hdr);
                return;
            }
        };
        let conn = Connection::guest_initiated(key, self.guest_cid, stream, hdr)
            .with_drain_timeout(self.config.close_drain_timeout);
        let token = self.next_token();
        self.insert(conn, token, EventSet::empty());
    }

    fn on_socket_event(&mut self, token: u64, events: EventSet) {
        match self.endpoints.get(&token).copied() {
            Some(Endpoint::Pending) => self.on_pending_readable(token),
            Some(Endpoint::Conn(key)) => {
                let Some(slot) = self.conns.get_mut(&key) else {
                    return;
                };
                let broken = EventSet::HANG_UP | EventSet::ERROR;
                if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | broken) {
                    slot.conn.on_host_readable();
                }
                if events.intersects(EventSet::OUT | broken) {
                    slot.conn.on_host_writable();
                }
                self.refresh(key);
            }
            None => {}
        }
    }
}

impl AsRawFd for Muxer {
    /// Readable when a host socket, the listener or the deadline timer needs attention.
    fn as_raw_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }
}

mod host_clients;
mod table;
#[cfg(test)]
mod tests;
