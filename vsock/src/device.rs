//! The virtio-vsock device core: moves packets between the guest's virtqueues and the muxer.
//!
//! Transport independent: callers own the `Queue`s and guest memory (vhost-user vrings today,
//! the built-in VMM's virtio-mmio queues later), call the `process_*` methods when a queue is
//! kicked or the device fd ([`AsRawFd`]) is readable, and notify the guest when a method
//! reports used buffers and `Queue::needs_notification` agrees.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use slog::{Logger, debug};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemory;

use super::muxer::{Muxer, MuxerConfig, MuxerError};
use super::packet::MAX_PKT_DATA;

/// Receive queue index (virtio spec 5.10.2).
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Event queue index; this device never posts events (no live migration / transport reset).
pub const EVENT_QUEUE: usize = 2;
/// Queues of a virtio-vsock device.
pub const NUM_QUEUES: usize = 3;
/// Largest guest receive buffer accepted: Linux posts 4 KiB buffers, 64 KiB is the largest
/// packet the protocol uses. Bigger ones are returned unused instead of mapped.
const MAX_RX_BUFFER: u32 = MAX_PKT_DATA;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid guest CID {0}: must be between 3 and 2^32-2")]
    InvalidCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("virtqueue access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error(
        "the driver moved the available index to {avail}, more than a ring ({size}) past the device's {next}: the queue is corrupt, the device needs a reset"
    )]
    AvailIndexOverrun { avail: u16, next: u16, size: u16 },
}

impl DeviceError {
    /// The guest broke the queue's rules: stop using the device until the driver resets it
    /// (the transport sets DEVICE_NEEDS_RESET where it can).
    pub fn needs_reset(&self) -> bool {
        matches!(self, DeviceError::AvailIndexOverrun { .. })
    }
}

/// virtio 2.7.13.3: the driver may publish at most one ring's worth of buffers ahead of
/// the device. An index further ahead means the ring is corrupt; `virtio-queue` then
/// refuses to iterate, and asking again would spin. (Shared with the built-in monitor's
/// other virtio devices.)
pub fn check_avail_index<M: GuestMemory>(mem: &M, queue: &Queue) -> Result<(), DeviceError> {
    let avail = queue.avail_idx(mem, Ordering::Acquire)?;
    let next = queue.next_avail();
    if (avail - Wrapping(next)).0 > queue.size() {
        return Err(DeviceError::AvailIndexOverrun {
            avail: avail.0,
            next,
            size: queue.size(),
        });
    }
    Ok(())
}

/// Guest CID validity: 0, 1 and 2 are reserved (hypervisor, loopback, host) and Linux keeps
/// the CID in 32 bits with `u32::MAX` meaning "any".
pub fn is_valid_guest_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

pub struct VsockDevice {
    guest_cid: u64,
    muxer: Muxer,
    log: Logger,
}

impl VsockDevice {
    /// Creates the device and binds its hybrid socket at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path, log: Logger) -> Result<Self, DeviceError> {
        Self::with_config(guest_cid, uds_path, MuxerConfig::default(), log)
    }

    /// [`Self::new`] with non-default limits and deadlines.
    pub fn with_config(
        guest_cid: u64,
        uds_path: &Path,
        config: MuxerConfig,
        log: Logger,
    ) -> Result<Self, DeviceError> {
        if !is_valid_guest_cid(guest_cid) {
            return Err(DeviceError::InvalidCid(guest_cid));
        }
        let muxer = Muxer::new(guest_cid, uds_path, config, log.clone())?;
        Ok(Self {
            guest_cid,
            muxer,
            log,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// `struct virtio_vsock_config`: the guest CID, little endian.
    pub fn config_space(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }

    /// Whether packets are waiting for guest receive buffers.
    pub fn has_rx_work(&self) -> bool {
        self.muxer.has_rx_work()
    }

    /// Drops all connections (the driver reset the device).
    pub fn reset(&mut self) {
        self.muxer.reset();
    }

    /// Handles host socket readiness; follow with [`Self::process_rx`].
    pub fn process_host_events(&mut self) {
        self.muxer.handle_host_events();
    }

    /// Consumes every packet the guest queued for transmission. Returns whether buffers were
    /// used (the caller decides about notifying the guest). Follow with [`Self::process_rx`]:
    /// guest packets often make replies due.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        loop {
            check_avail_index(mem, queue)?;
            queue.disable_notification(mem)?;
            while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => self.muxer.handle_guest_packet(&pkt),
                    Err(e) => debug!(self.log, "dropping bad TX descriptor chain"; "error" => %e),
                }
                used |= self.give_back(mem, queue, head, 0);
            }
            // Re-enable kicks; if the guest queued more meanwhile, go round again.
            if !queue.enable_notification(mem)? {
                return Ok(used);
            }
        }
    }

    /// Fills guest receive buffers while packets are pending. Returns whether buffers were used.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        let mut rechecked = false;
        if self.muxer.has_rx_work() {
            check_avail_index(mem, queue)?;
        }
        while self.muxer.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the guest adds some. Check once for a
                // race with the guest; a guest whose ring keeps lying does not get a spin.
                if queue.enable_notification(mem)? && !rechecked {
                    rechecked = true;
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_RX_BUFFER) {
                Ok(mut pkt) => match self.muxer.fill_rx(&mut pkt) {
                    Some(len) => len,
                    // Pending data, but the guest gave a buffer without room for any: hand it
                    // back empty rather than let it block the ring.
                    None if pkt.data_slice().is_none() => 0,
                    None => {
                        // Nothing to say after all: the buffer stays with the device.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    debug!(self.log, "returning bad RX descriptor chain"; "error" => %e);
                    // Zero length: too short for a header, the driver drops it.
                    0
                }
            };
            used |= self.give_back(mem, queue, head, len);
        }
        Ok(used)
    }

    /// Puts a chain in the used ring. A head index outside the ring (the available ring is
    /// guest-written and not validated by `virtio-queue`) cannot be returned: skip it.
    fn give_back<M: GuestMemory>(&self, mem: &M, queue: &mut Queue, head: u16, len: u32) -> bool {
        match queue.add_used(mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                debug!(self.log, "cannot return descriptor chain"; "head" => head, "error" => %e);
                false
            }
        }
    }
}

impl AsRawFd for VsockDevice {
    /// Readable when host sockets need [`VsockDevice::process_host_events`].
    fn as_raw_fd(&self) -> RawFd {
        self.muxer.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
