//! virtio-vsock over virtio-mmio: wraps the transport-independent [`VsockDevice`] (hybrid
//! vsock host side, shared with the QEMU backend's vhost-user server).
//!
//! The driver's register writes (activation, reset) arrive on vCPU threads, whose syscall
//! filter allows no socket or epoll call; every touch of the host sockets is left to the
//! device thread, woken through the RX queue's kick eventfd.

use std::os::fd::{AsRawFd, RawFd};

use slog::{Logger, debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, IrqTrigger, Memory, TYPE_VSOCK, VirtioDevice, VirtioError, notify_used};
use husk_vsock::VsockDevice;
use husk_vsock::device::{DeviceError, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};

/// Ring size offered for each queue (Firecracker's).
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

struct Active {
    mem: Memory,
    rx: Queue,
    tx: Queue,
    irq: IrqTrigger,
}

pub struct Vsock {
    device: VsockDevice,
    active: Option<Active>,
    /// The guest corrupted a queue: its queues are left alone until the driver resets.
    broken: bool,
    /// The driver reset the device; the host connections go on the device thread.
    reset_pending: bool,
    /// Wakes the device thread (a duplicate of the RX queue's kick eventfd).
    wake: Option<EventFd>,
    log: Logger,
}

impl Vsock {
    pub fn new(device: VsockDevice, log: Logger) -> Self {
        Self {
            device,
            active: None,
            broken: false,
            reset_pending: false,
            wake: None,
            log,
        }
    }

    /// Has the device thread run [`Self::settle`] and the RX queue soon.
    fn wake_device_thread(&self) {
        if let Some(wake) = &self.wake {
            // A full counter already means a wake-up is due.
            let _ = wake.write(1);
        }
    }

    /// On the device thread: drops the connections of a reset the driver made.
    fn settle(&mut self) {
        if std::mem::take(&mut self.reset_pending) {
            self.device.reset();
        }
    }

    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if !self.device.has_rx_work() || !a.rx.ready() {
            return;
        }
        let outcome = self.device.process_rx(a.mem.as_ref(), &mut a.rx);
        if Self::finish(&self.log, outcome, &a.mem, &mut a.rx, &a.irq) {
            self.break_device();
        }
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if !a.tx.ready() {
            return;
        }
        let outcome = self.device.process_tx(a.mem.as_ref(), &mut a.tx);
        if Self::finish(&self.log, outcome, &a.mem, &mut a.tx, &a.irq) {
            self.break_device();
        }
    }

    /// Notifies the guest of used buffers; returns true if the queue is corrupt.
    fn finish(
        log: &Logger,
        outcome: Result<bool, DeviceError>,
        mem: &Memory,
        queue: &mut Queue,
        irq: &IrqTrigger,
    ) -> bool {
        match outcome {
            Ok(true) => notify_used(mem, queue, irq),
            Ok(false) => {}
            Err(e) if e.needs_reset() => {
                warn!(log, "the guest corrupted a vsock queue; the device needs a reset"; "error" => %e);
                return true;
            }
            Err(e) => debug!(log, "vsock queue processing failed"; "error" => %e),
        }
        false
    }

    /// Stops using the queues and drops every connection until the driver resets.
    fn break_device(&mut self) {
        self.broken = true;
        self.active = None;
        self.device.reset();
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.device.config_space(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let event_idx = a.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let got = a.queues.len();
        let mut queues = a.queues.into_iter();
        let (Some(mut rx), Some(mut tx), Some(_event), None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            return Err(VirtioError::QueueCount {
                got,
                want: NUM_QUEUES,
            });
        };
        const _: () = assert!(RX_QUEUE == 0 && TX_QUEUE == 1 && EVENT_QUEUE == 2);
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        self.active = Some(Active {
            mem: a.mem,
            rx,
            tx,
            irq: a.irq,
        });
        if let Some(kick) = a.kicks.get(RX_QUEUE) {
            match kick.try_clone() {
                Ok(wake) => self.wake = Some(wake),
                Err(e) => {
                    warn!(self.log, "cannot keep the RX kick to wake the device thread"; "error" => %e)
                }
            }
        }
        // Host clients may have queued requests before the driver came up.
        self.wake_device_thread();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.reset_pending = true;
        self.wake_device_thread();
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.device.as_raw_fd()]
    }

    fn queue_event(&mut self, queue: usize) {
        self.settle();
        match queue {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => {
                self.process_tx();
                self.process_rx();
            }
            _ => {}
        }
    }

    fn host_event(&mut self, _index: usize) {
        self.settle();
        self.device.process_host_events();
        self.process_rx();
    }
}

#[cfg(test)]
#[path = "vsock_tests.rs"]
mod tests;
