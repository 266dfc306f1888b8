//! Virtio devices behind the virtio-mmio transport.
//!
//! A [`VirtioDevice`] describes itself (type, queues, features, config space) to the
//! transport ([`mmio::MmioTransport`]), which runs the driver handshake and, at `DRIVER_OK`,
//! hands it an [`Activation`]: guest memory, the configured queues, the interrupt and the
//! queue-kick eventfds. From then on the event loop ([`handler::VirtioHandler`]) calls the
//! device when a queue is kicked or one of its host fds is ready.

pub mod balloon;
pub mod fs;
pub mod handler;
pub mod mmio;
pub mod net;
pub mod tap;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device ids (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;
/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Guest memory as devices share it. Fixed for the VM's life (no hotplug).
pub type Memory = Arc<GuestMemoryMmap>;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("the driver configured {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not ready or its rings lie outside guest memory")]
    BadQueue(usize),
    #[error("connecting to the vhost-user backend: {0}")]
    Socket(std::io::Error),
    #[error("vhost-user backend: {0}")]
    VhostUser(#[from] vhost::Error),
    #[error("guest memory region at {0:#x} is not shareable (no file backing)")]
    SharedMemory(u64),
    #[error("tap device: {0}")]
    Tap(std::io::Error),
    #[error("signalling the guest: {0}")]
    Interrupt(std::io::Error),
}

/// The device's interrupt: status bits read by the driver plus an irqfd.
#[derive(Clone, Debug)]
pub struct IrqTrigger {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl IrqTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    pub fn trigger(&self, kind: u32) -> Result<(), VirtioError> {
        self.status.fetch_or(kind, Ordering::SeqCst);
        self.evt.write(1).map_err(VirtioError::Interrupt)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    pub mem: Memory,
    /// One per queue the device declared; the driver may leave some not ready.
    pub queues: Vec<Queue>,
    pub irq: IrqTrigger,
    /// Queue-kick eventfds (KVM ioeventfds on `QueueNotify`), one per queue.
    pub kicks: Vec<EventFd>,
    pub acked_features: u64,
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits (must include `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;
    /// Returns to the pre-activation state (driver wrote 0 to `Status`).
    fn reset(&mut self);
    /// Host fds the event loop watches for this device; events carry the index in this list.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Whether host fd `index` should be watched now (a device without guest buffers stops
    /// listening to a readable tap rather than spinning).
    fn wants_host_event(&self, _index: usize) -> bool {
        true
    }
    /// Whether kicks go to another process (vhost-user) instead of this event loop.
    fn kicks_handled_elsewhere(&self) -> bool {
        false
    }
    fn queue_event(&mut self, _queue: usize) {}
    fn host_event(&mut self, _index: usize) {}
    /// The guest broke a queue's rules and the device stopped using its queues: the
    /// transport sets DEVICE_NEEDS_RESET (virtio 2.1.2) until the driver resets the device.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Copies the part of `config` at `offset` into `data`; what lies outside reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Signals used buffers when the ring's notification rules ask for it (or when unsure: a
/// spurious interrupt is cheap, a lost one stalls the guest).
pub fn notify_used(mem: &GuestMemoryMmap, queue: &mut Queue, irq: &IrqTrigger) {
    use virtio_queue::QueueT;
    if !matches!(queue.needs_notification(mem), Ok(false)) {
        // The irqfd counter cannot overflow in practice; nothing useful to do on error.
        let _ = irq.trigger(INT_VRING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&config, 4, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn trigger_sets_status_and_ack_clears_it() {
        let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.trigger(INT_VRING).unwrap();
        irq.trigger(INT_CONFIG).unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.event_fd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }
}
