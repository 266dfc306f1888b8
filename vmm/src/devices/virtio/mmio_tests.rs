//! The virtio-mmio transport's register protocol against a driver that misbehaves.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::{INT_VRING, VirtioError, read_config_bytes};

const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | 0b101;

#[derive(Default)]
struct Seen {
    activations: Vec<(usize, u64, Vec<bool>)>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct FakeDevice {
    seen: Arc<Mutex<Seen>>,
    fail_activation: bool,
    /// Set by the test: the device found a corrupt queue.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        if self.fail_activation {
            return Err(VirtioError::BadQueue(0));
        }
        let ready = a.queues.iter().map(|q| q.ready()).collect();
        self.seen
            .lock()
            .unwrap()
            .activations
            .push((a.kicks.len(), a.acked_features, ready));
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
        self.broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
    fn needs_reset(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct Fixture {
    t: MmioTransport,
    seen: Arc<Mutex<Seen>>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    irq: IrqTrigger,
    kicks: Vec<EventFd>,
}

fn fixture(fail_activation: bool) -> Fixture {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let device = FakeDevice {
        seen: seen.clone(),
        fail_activation,
        broken: broken.clone(),
    };
    let t = MmioTransport::new(
        Box::new(device),
        mem,
        irq.clone(),
        kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        Logger::root(slog::Discard, slog::o!()),
    );
    Fixture {
        t,
        seen,
        broken,
        irq,
        kicks,
    }
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Drives the handshake up to FEATURES_OK with the given features.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, (features & 0xffff_ffff) as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, base: u32) {
    w(t, REG_QUEUE_SEL, index);
    w(t, REG_QUEUE_NUM, 8);
    w(t, REG_QUEUE_DESC_LOW, base);
    w(t, REG_QUEUE_DRIVER_LOW, base + 0x1000);
    w(t, REG_QUEUE_DEVICE_LOW, base + 0x2000);
    w(t, REG_QUEUE_READY, 1);
}

const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

#[test]
fn identification_registers() {
    let mut f = fixture(false);
    assert_eq!(r(&mut f.t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut f.t, REG_VERSION), 2);
    assert_eq!(r(&mut f.t, REG_DEVICE_ID), 19);
    assert_eq!(r(&mut f.t, REG_VENDOR_ID), VENDOR_ID);
    assert_eq!(r(&mut f.t, REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(r(&mut f.t, REG_CONFIG_GENERATION), 0);
    assert_eq!(r(&mut f.t, 0xf0), 0, "unknown register");
}

#[test]
fn device_features_are_paged() {
    let mut f = fixture(false);
    assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 0b101);
    w(&mut f.t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    w(&mut f.t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 0);
}

#[test]
fn full_handshake_activates_with_acked_features_only() {
    let mut f = fixture(false);
    // Driver tries to ack an unoffered feature (bit 1): masked out.
    negotiate(&mut f.t, FEATURES | 0b10);
    assert_eq!(f.t.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_QUEUE_SEL, 0);
    assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 16);
    assert_eq!(r(&mut f.t, REG_QUEUE_READY), 1);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(f.t.is_activated());
    assert_eq!(r(&mut f.t, REG_STATUS), ALL_OK);
    let seen = f.seen.lock().unwrap();
    assert_eq!(seen.activations, vec![(2, FEATURES, vec![true, false])]);
}

#[test]
fn features_ok_needs_version_1() {
    let mut f = fixture(false);
    negotiate(&mut f.t, 0b101);
    assert_eq!(f.t.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(!f.t.is_activated());
}

#[test]
fn invalid_status_transitions_are_ignored() {
    let mut f = fixture(false);
    w(&mut f.t, REG_STATUS, STATUS_DRIVER);
    assert_eq!(f.t.status(), 0);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert_eq!(f.t.status(), 0, "cannot skip to DRIVER_OK");
    w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE);
    w(
        &mut f.t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(f.t.status(), STATUS_ACKNOWLEDGE, "two bits at once");
    w(&mut f.t, REG_STATUS, STATUS_FAILED);
    assert_eq!(f.t.status(), STATUS_ACKNOWLEDGE | STATUS_FAILED);
    assert!(!f.t.is_activated());
}

#[test]
fn features_and_queues_only_change_in_their_phase() {
    let mut f = fixture(false);
    w(&mut f.t, REG_DRIVER_FEATURES, 0b101);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_QUEUE_SEL, 0);
    assert_eq!(
        r(&mut f.t, REG_QUEUE_READY),
        0,
        "queue writes before FEATURES_OK"
    );
    negotiate(&mut f.t, FEATURES);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_STATUS, ALL_OK);
    w(&mut f.t, REG_QUEUE_SEL, 0);
    w(&mut f.t, REG_QUEUE_READY, 0);
    assert_eq!(
        r(&mut f.t, REG_QUEUE_READY),
        1,
        "queue writes after DRIVER_OK"
    );
    // Queue registers of a queue that does not exist read as zero.
    w(&mut f.t, REG_QUEUE_SEL, 99);
    assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 0);
}

#[test]
fn rings_outside_guest_memory_fail_activation() {
    let mut f = fixture(false);
    negotiate(&mut f.t, FEATURES);
    setup_queue(&mut f.t, 0, 0x7fff_0000);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(!f.t.is_activated());
    assert_ne!(f.t.status() & STATUS_NEEDS_RESET, 0);
    assert_ne!(f.irq.status() & INT_CONFIG, 0);
    assert!(f.seen.lock().unwrap().activations.is_empty());
}

#[test]
fn bad_queue_size_fails_activation_and_device_errors_need_reset() {
    let mut f = fixture(false);
    negotiate(&mut f.t, FEATURES);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_QUEUE_NUM, 7);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(!f.t.is_activated());

    let mut f = fixture(true);
    negotiate(&mut f.t, FEATURES);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(!f.t.is_activated());
    assert_ne!(f.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn reset_returns_everything_to_the_initial_state() {
    let mut f = fixture(false);
    negotiate(&mut f.t, FEATURES);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_STATUS, ALL_OK);
    f.irq.trigger(INT_VRING).unwrap();
    w(&mut f.t, REG_STATUS, 0);
    assert!(!f.t.is_activated());
    assert_eq!(f.seen.lock().unwrap().resets, 1);
    assert_eq!(r(&mut f.t, REG_STATUS), 0);
    assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), 0);
    w(&mut f.t, REG_QUEUE_SEL, 0);
    assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
    // A reset before activation does not reach the device.
    w(&mut f.t, REG_STATUS, 0);
    assert_eq!(f.seen.lock().unwrap().resets, 1);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture(false);
    f.irq.trigger(INT_VRING).unwrap();
    f.irq.trigger(INT_CONFIG).unwrap();
    assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    w(&mut f.t, REG_INTERRUPT_ACK, INT_VRING);
    assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), INT_CONFIG);
}

#[test]
fn notify_forwards_to_the_kick_fd() {
    let mut f = fixture(false);
    w(&mut f.t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(f.kicks[1].read().unwrap(), 1);
    w(&mut f.t, REG_QUEUE_NOTIFY, 2);
    w(&mut f.t, REG_QUEUE_NOTIFY, u32::MAX);
    assert!(f.kicks[0].read().is_err(), "nothing pending on queue 0");
}

#[test]
fn config_space_passes_through_any_size() {
    let mut f = fixture(false);
    let mut b = [0u8; 1];
    f.t.read(0x102, &mut b);
    assert_eq!(b, [3]);
    let mut q = [0u8; 8];
    f.t.read(0x100, &mut q);
    assert_eq!(q, [1, 2, 3, 4, 5, 6, 7, 8]);
    f.t.read(0xfff, &mut b);
    assert_eq!(b, [0]);
    f.t.write(0x104, &[9, 9]);
    assert_eq!(f.seen.lock().unwrap().config_writes, vec![(4, vec![9, 9])]);
}

#[test]
fn misaligned_or_odd_sized_register_accesses_are_ignored() {
    let mut f = fixture(false);
    let mut two = [0xaau8; 2];
    f.t.read(REG_MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0u8; 4];
    f.t.read(REG_MAGIC + 1, &mut four);
    assert_eq!(four, [0; 4]);
    f.t.write(REG_STATUS, &[1]);
    f.t.write(REG_STATUS + 2, &1u32.to_le_bytes());
    f.t.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.t.status(), 0);
}

/// A device that found a corrupt queue: the transport shows DEVICE_NEEDS_RESET and raises
/// a configuration interrupt once; a reset by the driver clears it.
#[test]
fn a_device_that_needs_reset_is_shown_to_the_driver() {
    let mut f = fixture(false);
    negotiate(&mut f.t, FEATURES);
    setup_queue(&mut f.t, 0, 0x1_0000);
    w(&mut f.t, REG_STATUS, ALL_OK);
    assert!(f.t.is_activated());
    f.t.queue_event(0);
    assert_eq!(f.t.status() & STATUS_NEEDS_RESET, 0);
    f.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    f.t.queue_event(0);
    assert_ne!(f.t.status() & STATUS_NEEDS_RESET, 0);
    assert_ne!(f.irq.status() & INT_CONFIG, 0);
    f.t.host_event(0);
    w(&mut f.t, REG_STATUS, 0);
    assert_eq!(f.t.status(), 0);
    assert!(!f.t.device().needs_reset());
}
