//! Connects a virtio device to the monitor's event loop (`event-manager`): queue kicks and the
//! device's host fds become calls on the device, under the transport's lock (the vCPU threads
//! take the same lock for register accesses).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use slog::{Logger, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;

/// Event data of host fd `i` is `HOST_FD_BASE + i`; below it are queue indexes.
const HOST_FD_BASE: u32 = 1 << 16;

pub struct VirtioHandler {
    transport: Arc<Mutex<MmioTransport>>,
    kicks: Vec<EventFd>,
    host_fds: Vec<RawFd>,
    /// Which host fds are registered now.
    watching: Vec<bool>,
    log: Logger,
}

impl VirtioHandler {
    pub fn new(transport: Arc<Mutex<MmioTransport>>, kicks: Vec<EventFd>, log: Logger) -> Self {
        let host_fds = transport
            .lock()
            .map(|t| t.device().host_fds())
            .unwrap_or_default();
        let watching = vec![false; host_fds.len()];
        Self {
            transport,
            kicks,
            host_fds,
            watching,
            log,
        }
    }

    /// Brings host fd registrations in line with what the device wants.
    fn sync_interest(&mut self, transport: &MmioTransport, ops: &mut EventOps) {
        for (i, (&fd, watching)) in self
            .host_fds
            .iter()
            .zip(self.watching.iter_mut())
            .enumerate()
        {
            let wanted = transport.device().wants_host_event(i);
            if wanted == *watching {
                continue;
            }
            // Bounded by the device's fd count, far below u16::MAX.
            let data = HOST_FD_BASE + u32::try_from(i).unwrap_or(0);
            let events = Events::with_data_raw(fd, data, EventSet::IN);
            let result = if wanted {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            match result {
                Ok(()) => *watching = wanted,
                Err(e) => warn!(self.log, "cannot update host fd interest"; "error" => ?e),
            }
        }
    }
}

impl MutEventSubscriber for VirtioHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let external = self
            .transport
            .lock()
            .map(|t| t.device().kicks_handled_elsewhere())
            .unwrap_or(true);
        if !external {
            for (i, kick) in (0u32..).zip(&self.kicks) {
                if let Err(e) = ops.add(Events::with_data(kick, i, EventSet::IN)) {
                    warn!(self.log, "cannot watch queue kicks"; "queue" => i, "error" => ?e);
                }
            }
        }
        let transport = self.transport.clone();
        if let Ok(t) = transport.lock() {
            self.sync_interest(&t, ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let transport = self.transport.clone();
        let Ok(mut t) = transport.lock() else {
            return;
        };
        if data < HOST_FD_BASE {
            let queue = data as usize;
            if let Some(kick) = self.kicks.get(queue) {
                // Non-blocking; an empty counter just means a spurious wake-up.
                let _ = kick.read();
            }
            t.queue_event(queue);
        } else {
            t.host_event((data - HOST_FD_BASE) as usize);
        }
        self.sync_interest(&t, ops);
    }
}
