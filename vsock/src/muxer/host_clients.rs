//! Host clients of the hybrid socket: accepting them, their `CONNECT` handshake, and the
//! deadlines of handshakes and closing connections.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use slog::{debug, warn};
use vmm_sys_util::epoll::EventSet;

use super::{ACCEPT_BATCH, Endpoint, LOCAL_PORT_BASE, Muxer, PendingClient};
use crate::connection::{ConnKey, Connection};
use crate::hybrid_socket::ConnectLineReader;

impl Muxer {
    pub(super) fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok(Some(stream)) => stream,
                Ok(None) => return,
                Err(e) => {
                    warn!(self.log, "hybrid vsock accept failed"; "error" => %e);
                    return;
                }
            };
            if self.connection_count() >= self.config.max_connections {
                debug!(self.log, "connection limit reached, closing host client");
                continue;
            }
            let token = self.next_token();
            let fd = stream.as_raw_fd();
            if let Err(e) = self
                .poller
                .update(fd, token, EventSet::empty(), EventSet::IN)
            {
                warn!(self.log, "cannot watch host client"; "error" => %e);
                continue;
            }
            let deadline = Instant::now() + self.config.connect_line_timeout;
            let client = PendingClient {
                stream,
                reader: ConnectLineReader::default(),
                deadline,
            };
            self.pending.insert(token, client);
            self.endpoints.insert(token, Endpoint::Pending);
            self.start_ticking();
        }
    }

    pub(super) fn on_pending_readable(&mut self, token: u64) {
        let Some(client) = self.pending.get_mut(&token) else {
            return;
        };
        match client.reader.poll(&client.stream) {
            Ok(None) => {}
            Ok(Some(port)) => {
                if let Some(client) = self.pending.remove(&token) {
                    self.open_host_connection(token, client.stream, port);
                }
            }
            Err(e) => {
                debug!(self.log, "dropping host client"; "error" => %e);
                self.drop_pending(token);
            }
        }
    }

    pub(super) fn open_host_connection(&mut self, token: u64, stream: UnixStream, peer_port: u32) {
        let Some(local_port) = self.allocate_local_port(peer_port) else {
            self.forget_socket(stream.as_raw_fd(), token, EventSet::IN);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let deadline = Instant::now() + self.config.connect_response_timeout;
        let conn = Connection::host_initiated(key, self.guest_cid, stream, deadline)
            .with_drain_timeout(self.config.close_drain_timeout);
        // The socket is still registered from the handshake; refresh() adjusts the interest.
        self.insert(conn, token, EventSet::IN);
    }

    /// A local port not used with `peer_port`; at most `max_connections` are taken, so the
    /// search ends quickly.
    pub(super) fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.config.max_connections {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    pub(super) fn drop_pending(&mut self, token: u64) {
        if let Some(client) = self.pending.remove(&token) {
            self.forget_socket(client.stream.as_raw_fd(), token, EventSet::IN);
        }
    }

    pub(super) fn start_ticking(&mut self) {
        if let Err(e) = self.poller.start_ticking() {
            warn!(self.log, "cannot arm the vsock deadline timer"; "error" => %e);
        }
    }

    pub(super) fn on_tick(&mut self) {
        self.poller.consume_tick();
        let now = Instant::now();
        let expired_clients: Vec<u64> = (self.pending.iter())
            .filter(|(_, c)| c.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in expired_clients {
            debug!(self.log, "host client never sent a CONNECT line");
            self.drop_pending(token);
        }
        let expired_conns: Vec<ConnKey> = (self.conns.iter())
            .filter(|(_, s)| s.conn.deadline().is_some_and(|d| d <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in expired_conns {
            if let Some(slot) = self.conns.get_mut(&key) {
                debug!(self.log, "vsock connection timed out"; "local" => key.local_port, "peer" => key.peer_port);
                slot.conn.kill();
                self.refresh(key);
            }
        }
        let waiting =
            !self.pending.is_empty() || self.conns.values().any(|s| s.conn.deadline().is_some());
        if !waiting {
            if let Err(e) = self.poller.stop_ticking() {
                warn!(self.log, "cannot disarm the vsock deadline timer"; "error" => %e);
            }
        }
    }
}
