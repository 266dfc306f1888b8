//! virtio-net on a tap device: no offloads, no mergeable buffers; each guest frame (with its
//! 12-byte virtio-net header, which the tap understands as-is) is copied through one bounded
//! buffer. The tap is only watched while a frame could be delivered, so a guest that stops
//! posting receive buffers cannot make the monitor spin. A queue whose available index runs
//! more than a ring ahead is corrupt: the device drops its queues and reports that it needs a
//! reset until the driver resets it.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};

use slog::{Logger, debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::tap::{Tap, VNET_HDR_LEN};
use super::{Activation, IrqTrigger, Memory, TYPE_NET, VirtioDevice, VirtioError, notify_used};
use husk_vsock::device::check_avail_index;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const VIRTIO_NET_F_MAC: u64 = 5;
/// Header plus the largest frame a tap without offloads delivers (64 KiB + Ethernet header).
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Frames moved per event before yielding to other devices.
const BATCH: usize = 64;

struct Active {
    mem: Memory,
    rx: Queue,
    tx: Queue,
    irq: IrqTrigger,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    active: Option<Active>,
    /// A frame read from the tap that is waiting for a guest buffer.
    pending: usize,
    buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// The guest corrupted a queue; nothing is touched until the driver resets the device.
    broken: bool,
    log: Logger,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], log: Logger) -> Self {
        Self {
            tap,
            mac,
            active: None,
            pending: 0,
            buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            broken: false,
            log,
        }
    }

    /// Whether `queue` of the active device may be used; a corrupt one breaks the device.
    fn queue_sound(&mut self, queue: usize) -> bool {
        let Some(a) = &self.active else {
            return false;
        };
        let q = if queue == RX_QUEUE { &a.rx } else { &a.tx };
        if !q.ready() {
            return false;
        }
        match check_avail_index(a.mem.as_ref(), q) {
            Ok(()) => true,
            Err(e) => {
                warn!(self.log, "the guest corrupted a net queue; the device needs a reset";
                      "queue" => queue, "error" => %e);
                self.active = None;
                self.pending = 0;
                self.broken = true;
                false
            }
        }
    }

    fn transmit(&mut self) {
        if !self.queue_sound(TX_QUEUE) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let frame = &mut self.tx_buf;
        while let Some(chain) = a.tx.pop_descriptor_chain(a.mem.as_ref()) {
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for desc in chain {
                let Ok(n) = usize::try_from(desc.len()) else {
                    ok = false;
                    break;
                };
                let end = len.saturating_add(n);
                if desc.is_write_only() || end > MAX_FRAME {
                    ok = false;
                    break;
                }
                if a.mem.read_slice(&mut frame[len..end], desc.addr()).is_err() {
                    ok = false;
                    break;
                }
                len = end;
            }
            if ok && len > VNET_HDR_LEN {
                if let Err(e) = self.tap.write_frame(&frame[..len]) {
                    debug!(self.log, "tap write failed, frame dropped"; "error" => %e);
                }
            } else {
                debug!(self.log, "dropping malformed TX chain"; "head" => head);
            }
            used |= a.tx.add_used(a.mem.as_ref(), head, 0).is_ok();
        }
        if used {
            notify_used(&a.mem, &mut a.tx, &a.irq);
        }
    }

    fn receive(&mut self) {
        if !self.queue_sound(RX_QUEUE) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        for _ in 0..BATCH {
            if self.pending == 0 {
                match self.tap.read_frame(&mut self.buf) {
                    Ok(n) if n > VNET_HDR_LEN => self.pending = n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(self.log, "tap read failed"; "error" => %e);
                        break;
                    }
                }
                // VERSION_1 headers carry the buffer count; the tap leaves it zero.
                self.buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            }
            let Some(chain) = a.rx.pop_descriptor_chain(a.mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            let frame = &self.buf[..self.pending];
            let mut written = 0usize;
            for desc in chain {
                if written == frame.len() || !desc.is_write_only() {
                    break;
                }
                let n = usize::try_from(desc.len())
                    .unwrap_or(0)
                    .min(frame.len() - written);
                if a.mem
                    .write_slice(&frame[written..written + n], desc.addr())
                    .is_err()
                {
                    break;
                }
                written += n;
            }
            let len = if written == frame.len() {
                u32::try_from(written).unwrap_or(0)
            } else {
                debug!(self.log, "guest RX buffer too small, frame dropped"; "frame" => frame.len());
                0
            };
            self.pending = 0;
            used |= a.rx.add_used(a.mem.as_ref(), head, len).is_ok();
        }
        if used {
            notify_used(&a.mem, &mut a.rx, &a.irq);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac, then status/max_virtqueue_pairs/mtu, which are not offered (zero).
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        super::read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let got = a.queues.len();
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(VirtioError::QueueCount { got, want: 2 });
        };
        self.active = Some(Active {
            mem: a.mem,
            rx,
            tx,
            irq: a.irq,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = 0;
        self.broken = false;
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    /// Watch the tap only while a frame can go somewhere.
    fn wants_host_event(&self, _index: usize) -> bool {
        self.active.is_some() && self.pending == 0
    }

    fn queue_event(&mut self, queue: usize) {
        match queue {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => {}
        }
    }

    fn host_event(&mut self, _index: usize) {
        self.receive();
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
