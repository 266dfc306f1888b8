//! Connection table bookkeeping: adding and removing connections, and keeping each one's epoll
//! interest, RX queue membership and timer in line with its state.

use std::collections::hash_map::Entry;
use std::os::fd::{AsRawFd, RawFd};

use slog::debug;
use vmm_sys_util::epoll::EventSet;

use super::{Endpoint, Muxer, Slot};
use crate::connection::{ConnKey, Connection, State};

impl Muxer {
    /// Adds a connection whose socket is registered in epoll with `registered` under `token`.
    pub(super) fn insert(&mut self, conn: Connection, token: u64, registered: EventSet) {
        let key = conn.key();
        match self.conns.entry(key) {
            Entry::Vacant(entry) => {
                self.endpoints.insert(token, Endpoint::Conn(key));
                entry.insert(Slot {
                    conn,
                    token,
                    registered,
                    queued: false,
                });
                self.refresh(key);
            }
            // Callers check the key is free; never let a socket leak in epoll regardless.
            Entry::Occupied(_) => {
                if let Some(stream) = conn.stream() {
                    self.forget_socket(stream.as_raw_fd(), token, registered);
                }
            }
        }
    }

    /// Unregisters a socket that is about to be closed.
    pub(super) fn forget_socket(&mut self, fd: RawFd, token: u64, registered: EventSet) {
        if let Err(e) = self.poller.update(fd, token, registered, EventSet::empty()) {
            debug!(self.log, "epoll delete failed"; "error" => %e);
        }
        self.endpoints.remove(&token);
    }

    pub(super) fn remove(&mut self, key: ConnKey) {
        if let Some(slot) = self.conns.remove(&key) {
            if let Some(stream) = slot.conn.stream() {
                self.forget_socket(stream.as_raw_fd(), slot.token, slot.registered);
            } else {
                self.endpoints.remove(&slot.token);
            }
        }
    }

    /// Brings epoll interest, the RX queue and the table in line with the connection's state.
    pub(super) fn refresh(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = slot.conn.wanted_events();
        if let Some(stream) = slot.conn.stream() {
            let fd = stream.as_raw_fd();
            match self.poller.update(fd, slot.token, slot.registered, wanted) {
                Ok(()) => slot.registered = wanted,
                Err(e) => {
                    debug!(self.log, "epoll update failed, resetting connection"; "error" => %e);
                    let _ = self
                        .poller
                        .update(fd, slot.token, slot.registered, EventSet::empty());
                    slot.registered = EventSet::empty();
                    slot.conn.kill();
                }
            }
        }
        if slot.conn.state() == State::Reset {
            slot.conn.close_host();
        }
        if slot.conn.is_finished() {
            self.remove(key);
            return;
        }
        if !slot.queued && slot.conn.has_rx_work() {
            slot.queued = true;
            self.rx_queue.push_back(key);
        }
        if slot.conn.deadline().is_some() {
            self.start_ticking();
        }
    }
}
