//! vhost-user adapter: serves [`VsockDevice`] to QEMU's `vhost-user-vsock-device` through
//! `vhost-user-backend`.
//!
//! QEMU keeps the event queue for itself and hands the backend only RX and TX. Everything runs
//! on the library's single vring worker thread: queue kicks and the device's host-socket fd
//! (registered as an extra listener) all arrive as `handle_event` calls, so the device needs
//! no locking of its own.

use std::io;
use std::ops::Deref;

use slog::{Logger, debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::device::{DeviceError, RX_QUEUE, TX_QUEUE, VsockDevice};

/// Vrings QEMU's vhost-user-vsock passes to the backend (RX and TX; it keeps the event queue).
pub const VHOST_USER_QUEUES: usize = 2;
/// Largest ring accepted; QEMU uses 128 entries for vsock, 1024 leaves room for others.
const MAX_QUEUE_SIZE: usize = 1024;
/// `handle_event` ids: the vring index for kicks; the library reserves the next id
/// (`VHOST_USER_QUEUES`) for its exit/enable event; the device's host-socket fd comes after.
const RX_EVENT: u16 = 0;
const TX_EVENT: u16 = 1;
pub const HOST_EVENT: u16 = 3;
const _: () = assert!(
    RX_EVENT as usize == RX_QUEUE
        && TX_EVENT as usize == TX_QUEUE
        && HOST_EVENT as usize > VHOST_USER_QUEUES
);

pub struct VsockBackend {
    device: VsockDevice,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    log: Logger,
}

impl VsockBackend {
    pub fn new(device: VsockDevice, log: Logger) -> Self {
        Self {
            device,
            mem: None,
            log,
        }
    }

    fn process_tx(&mut self, vrings: &[VringRwLock]) {
        let (Some(mem), Some(vring)) = (&self.mem, vrings.get(TX_QUEUE)) else {
            return;
        };
        let mem = mem.memory();
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return;
        }
        let outcome = self.device.process_tx(mem.deref(), state.get_queue_mut());
        notify_if_used(&self.log, outcome, mem.deref(), &mut state);
    }

    fn process_rx(&mut self, vrings: &[VringRwLock]) {
        if !self.device.has_rx_work() {
            return;
        }
        let (Some(mem), Some(vring)) = (&self.mem, vrings.get(RX_QUEUE)) else {
            return;
        };
        let mem = mem.memory();
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return;
        }
        let outcome = self.device.process_rx(mem.deref(), state.get_queue_mut());
        notify_if_used(&self.log, outcome, mem.deref(), &mut state);
    }
}

fn notify_if_used(
    log: &Logger,
    outcome: Result<bool, DeviceError>,
    mem: &GuestMemoryMmap,
    state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
) {
    match outcome {
        Ok(false) => {}
        Ok(true) => match state.get_queue_mut().needs_notification(mem) {
            Ok(false) => {}
            // When unsure, interrupt: a spurious interrupt is cheap, a lost one stalls the guest.
            Ok(true) | Err(_) => {
                if let Err(e) = state.signal_used_queue() {
                    warn!(log, "cannot signal the guest"; "error" => %e);
                }
            }
        },
        // vhost-user has no way to set the guest-visible DEVICE_NEEDS_RESET: stop serving
        // the corrupt queue (the guest's driver sees a dead device) rather than spin on it.
        Err(e) if e.needs_reset() => {
            warn!(log, "the guest corrupted a vsock queue; no longer serving it"; "error" => %e);
            state.set_enabled(false);
        }
        Err(e) => debug!(log, "vsock queue processing failed"; "error" => %e),
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        VHOST_USER_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // QEMU reads the guest CID from the backend's config space.
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The library configures the queues; `Queue` handles both notification schemes.
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.device.config_space();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(config.len());
        let end = start
            .saturating_add(usize::try_from(size).unwrap_or(usize::MAX))
            .min(config.len());
        config[start..end].to_vec()
    }

    fn reset_device(&mut self) {
        self.device.reset();
    }

    fn stop_vring(&mut self, _queue_index: u32) -> io::Result<()> {
        // The front end stops the device (VM shutdown or driver reset): the guest side of every
        // connection is gone, so close the host side instead of leaving clients hanging.
        self.device.reset();
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Never return an error: the library ends the worker thread on one, which would leave
        // QEMU connected to a dead device. Problems are per connection and handled inside.
        match device_event {
            RX_EVENT => self.process_rx(vrings),
            TX_EVENT => {
                self.process_tx(vrings);
                self.process_rx(vrings);
            }
            HOST_EVENT => {
                self.device.process_host_events();
                self.process_rx(vrings);
            }
            other => debug!(self.log, "unexpected vhost-user event"; "id" => other),
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "vhost_user_tests.rs"]
mod hostile_ring_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use slog::o;

    fn backend() -> (tempfile::TempDir, VsockBackend) {
        let dir = tempfile::tempdir().unwrap();
        let log = Logger::root(slog::Discard, o!());
        let device = VsockDevice::new(42, &dir.path().join("v.sock"), log.clone()).unwrap();
        (dir, VsockBackend::new(device, log))
    }

    #[test]
    fn config_space_is_the_guest_cid_and_reads_are_bounded() {
        let (_dir, b) = backend();
        assert_eq!(b.get_config(0, 8), 42u64.to_le_bytes().to_vec());
        assert_eq!(b.get_config(0, 4), vec![42, 0, 0, 0]);
        assert_eq!(b.get_config(4, 100), vec![0, 0, 0, 0]);
        assert!(b.get_config(9, 1).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
    }

    #[test]
    fn offers_what_qemu_vhost_user_vsock_needs() {
        let (_dir, b) = backend();
        assert_eq!(b.num_queues(), 2);
        assert!(
            b.protocol_features()
                .contains(VhostUserProtocolFeatures::CONFIG)
        );
        assert_ne!(b.features() & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(
            b.features() & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert!(u64::from(HOST_EVENT) > VHOST_USER_QUEUES as u64);
    }
}
