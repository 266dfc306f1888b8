//! virtio-vsock over virtio-mmio: wraps the transport-independent [`VsockDevice`] (hybrid
//! vsock host side, shared with the QEMU backend's vhost-user server).

use std::os::fd::{AsRawFd, RawFd};

use slog::{Logger, debug};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};

use super::{Activation, IrqTrigger, Memory, TYPE_VSOCK, VirtioDevice, VirtioError, notify_used};
use crate::vsock::VsockDevice;
use crate::vsock::device::{DeviceError, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};

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
    log: Logger,
}

impl Vsock {
    pub fn new(device: VsockDevice, log: Logger) -> Self {
        Self {
            device,
            active: None,
            log,
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
        Self::finish(&self.log, outcome, &a.mem, &mut a.rx, &a.irq);
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if !a.tx.ready() {
            return;
        }
        let outcome = self.device.process_tx(a.mem.as_ref(), &mut a.tx);
        Self::finish(&self.log, outcome, &a.mem, &mut a.tx, &a.irq);
    }

    fn finish(
        log: &Logger,
        outcome: Result<bool, DeviceError>,
        mem: &Memory,
        queue: &mut Queue,
        irq: &IrqTrigger,
    ) {
        match outcome {
            Ok(true) => notify_used(mem, queue, irq),
            Ok(false) => {}
            Err(e) => debug!(log, "vsock queue processing failed"; "error" => %e),
        }
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
        // Host clients may have queued requests before the driver came up.
        self.process_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.device.reset();
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.device.as_raw_fd()]
    }

    fn queue_event(&mut self, queue: usize) {
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
        self.device.process_host_events();
        self.process_rx();
    }
}

#[cfg(test)]
#[path = "vsock_tests.rs"]
mod tests;
