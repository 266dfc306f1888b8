//! Addresses, IRQs, irqfd/ioeventfd wiring and command-line announcements.

use std::cell::RefCell;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::{Activation, VirtioError};

#[derive(Default)]
struct FakeKvm {
    irqfds: RefCell<Vec<u32>>,
    ioevents: RefCell<Vec<(u64, u32)>>,
}

impl IrqWiring for FakeKvm {
    fn register_irqfd(&self, _evt: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.irqfds.borrow_mut().push(gsi);
        Ok(())
    }
    fn register_ioevent(&self, _evt: &EventFd, addr: u64, datamatch: u32) -> std::io::Result<()> {
        self.ioevents.borrow_mut().push((addr, datamatch));
        Ok(())
    }
}

struct Dummy;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 8]
    }
    fn features(&self) -> u64 {
        1 << 32
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _a: Activation) -> Result<(), VirtioError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

fn mem() -> Memory {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
}

/// The command line the device manager announces its devices on.
fn announced(dm: &DeviceManager) -> String {
    let mut cmdline = linux_loader::cmdline::Cmdline::new(2048).unwrap();
    dm.announce(&mut cmdline).unwrap();
    cmdline.as_cstring().unwrap().into_string().unwrap()
}

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

#[test]
fn virtio_devices_get_windows_irqs_ioeventfds_and_cmdline_entries() {
    let kvm = FakeKvm::default();
    let mut dm = DeviceManager::new().unwrap();
    let a = dm
        .add_virtio_device(&kvm, Box::new(Dummy), mem(), &log())
        .unwrap();
    let b = dm
        .add_virtio_device(&kvm, Box::new(Dummy), mem(), &log())
        .unwrap();
    assert_eq!(a, 0xd000_1000);
    assert_eq!(b, 0xd000_2000);
    assert_eq!(*kvm.irqfds.borrow(), vec![5, 6]);
    assert_eq!(
        *kvm.ioevents.borrow(),
        vec![(a + 0x50, 0), (a + 0x50, 1), (b + 0x50, 0), (b + 0x50, 1)]
    );
    assert_eq!(
        announced(&dm),
        "virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6"
    );
    let mut magic = [0u8; 4];
    assert!(dm.mmio_bus.read(b, &mut magic));
    assert_eq!(&magic, b"virt");
    let mut id = [0u8; 4];
    dm.mmio_bus.read(b + 8, &mut id);
    assert_eq!(u32::from_le_bytes(id), 42);
    assert_eq!(dm.take_handlers().len(), 2);
    assert!(dm.take_handlers().is_empty());
}

#[test]
fn irq_lines_run_out_cleanly() {
    let kvm = FakeKvm::default();
    let mut dm = DeviceManager::new().unwrap();
    let lines = IRQ_MAX - IRQ_VIRTIO_BASE + 1;
    for _ in 0..lines {
        dm.add_virtio_device(&kvm, Box::new(Dummy), mem(), &log())
            .unwrap();
    }
    let err = dm
        .add_virtio_device(&kvm, Box::new(Dummy), mem(), &log())
        .err();
    assert!(matches!(err, Some(DeviceManagerError::Allocate(_))));
}

#[test]
fn legacy_devices_sit_at_their_ports() {
    let kvm = FakeKvm::default();
    let mut dm = DeviceManager::new().unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    dm.add_legacy_devices(&kvm, exit.clone(), Vec::new(), Instant::now(), &log())
        .unwrap();
    assert_eq!(*kvm.irqfds.borrow(), vec![4]);
    // COM1 line status register: transmitter empty.
    let mut lsr = [0u8];
    assert!(dm.pio_bus.read(0x3fd, &mut lsr));
    assert_ne!(lsr[0] & 0x20, 0);
    assert!(dm.mmio_bus.write(BOOT_TIMER_MMIO_ADDR, &[123]));
    assert_eq!(announced(&dm), "husk.boot_timer=0xd0000000");
    assert!(!exit.is_requested());
    assert!(dm.pio_bus.write(0x64, &[0xfe]));
    assert!(exit.is_requested());
}
