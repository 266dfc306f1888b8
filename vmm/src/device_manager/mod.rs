//! Places devices in the machine: port and MMIO bus ranges, IRQ lines (GSIs), the irqfds and
//! ioeventfds that connect them to KVM, and the `virtio_mmio.device=` command-line entries that
//! tell the guest where its virtio devices are (no ACPI/DT in the guest).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use slog::Logger;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::arch::{BOOT_TIMER_MMIO_ADDR, IOAPIC_ADDR, IRQ_MAX, IRQ_VIRTIO_BASE, VIRTIO_MMIO_START};
use super::devices::boot_timer::{BOOT_TIMER_MMIO_LEN, BootTimer};
use super::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use super::devices::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN, Serial};
use super::devices::virtio::handler::VirtioHandler;
use super::devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, REG_QUEUE_NOTIFY};
use super::devices::virtio::{IrqTrigger, Memory, VirtioDevice};
use super::devices::{Bus, BusError, ExitSignal};

/// How devices reach KVM; implemented by `kvm::Vm`, faked in tests.
pub trait IrqWiring {
    /// Raises `gsi` whenever `evt` is written.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> std::io::Result<()>;
    /// Signals `evt` (instead of exiting to the monitor) on 4-byte writes of `datamatch` to
    /// `mmio_addr`.
    fn register_ioevent(
        &self,
        evt: &EventFd,
        mmio_addr: u64,
        datamatch: u32,
    ) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("no room left for another virtio-mmio device: {0}")]
    Allocate(vm_allocator::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("registering {what} with KVM: {source}")]
    Wiring {
        what: &'static str,
        source: std::io::Error,
    },
}

pub struct DeviceManager {
    mmio_space: AddressAllocator,
    irqs: IdAllocator,
    pub pio_bus: Bus,
    pub mmio_bus: Bus,
    /// What the guest kernel is told about: the boot-timer page, then each virtio-mmio
    /// window and its IRQ line, in the order they were added.
    announced: Vec<Announcement>,
    handlers: Vec<VirtioHandler>,
}

/// A device the kernel command line must name.
enum Announcement {
    BootTimer(u64),
    VirtioMmio { base: u64, gsi: u32 },
}

fn eventfd() -> Result<EventFd, DeviceManagerError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(DeviceManagerError::EventFd)
}

fn wiring(what: &'static str) -> impl FnOnce(std::io::Error) -> DeviceManagerError {
    move |source| DeviceManagerError::Wiring { what, source }
}

impl DeviceManager {
    pub fn new() -> Result<Self, DeviceManagerError> {
        Ok(Self {
            mmio_space: AddressAllocator::new(VIRTIO_MMIO_START, IOAPIC_ADDR - VIRTIO_MMIO_START)
                .map_err(DeviceManagerError::Allocate)?,
            irqs: IdAllocator::new(IRQ_VIRTIO_BASE, IRQ_MAX)
                .map_err(DeviceManagerError::Allocate)?,
            pio_bus: Bus::new(),
            mmio_bus: Bus::new(),
            announced: Vec::new(),
            handlers: Vec::new(),
        })
    }

    /// COM1 (to `serial_out`), the i8042 (reset) and the boot timer (an MMIO page announced
    /// to the agent on the command line).
    pub fn add_legacy_devices<W: Write + Send + 'static>(
        &mut self,
        kvm: &dyn IrqWiring,
        exit: Arc<ExitSignal>,
        serial_out: W,
        vm_created: Instant,
        log: &Logger,
    ) -> Result<(), DeviceManagerError> {
        let serial_irq = eventfd()?;
        kvm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(wiring("the serial port irqfd"))?;
        let serial = Serial::new(
            serial_irq,
            serial_out,
            log.new(slog::o!("device" => "serial")),
        );
        self.pio_bus
            .insert(COM1_PORT, COM1_PORT_LEN, Arc::new(Mutex::new(serial)))?;
        self.pio_bus.insert(
            I8042_PORT,
            I8042_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(exit))),
        )?;
        let timer = Arc::new(Mutex::new(BootTimer::new(
            vm_created,
            log.new(slog::o!("device" => "boot-timer")),
        )));
        self.mmio_bus
            .insert(BOOT_TIMER_MMIO_ADDR, BOOT_TIMER_MMIO_LEN, timer)?;
        self.announced
            .push(Announcement::BootTimer(BOOT_TIMER_MMIO_ADDR));
        Ok(())
    }

    /// Puts `device` behind a virtio-mmio window with its own IRQ line and kick eventfds.
    pub fn add_virtio_device(
        &mut self,
        kvm: &dyn IrqWiring,
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        log: &Logger,
    ) -> Result<u64, DeviceManagerError> {
        let range = self
            .mmio_space
            .allocate(MMIO_WINDOW, MMIO_WINDOW, AllocPolicy::FirstMatch)
            .map_err(DeviceManagerError::Allocate)?;
        let base = range.start();
        let gsi = self
            .irqs
            .allocate_id()
            .map_err(DeviceManagerError::Allocate)?;
        let irq_evt = eventfd()?;
        kvm.register_irqfd(&irq_evt, gsi)
            .map_err(wiring("a virtio irqfd"))?;
        let mut kicks = Vec::new();
        for queue in 0..device.queue_max_sizes().len() {
            let kick = eventfd()?;
            // Bounded by the device's queue count.
            let datamatch = u32::try_from(queue).unwrap_or(u32::MAX);
            kvm.register_ioevent(&kick, base + REG_QUEUE_NOTIFY, datamatch)
                .map_err(wiring("a virtio ioeventfd"))?;
            kicks.push(kick);
        }
        let clones = kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeviceManagerError::EventFd)?;
        let log =
            log.new(slog::o!("device" => device.device_type(), "mmio" => format!("{base:#x}")));
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem,
            IrqTrigger::new(irq_evt),
            clones,
            log.clone(),
        )));
        self.mmio_bus.insert(base, MMIO_WINDOW, transport.clone())?;
        self.handlers
            .push(VirtioHandler::new(transport, kicks, log));
        self.announced.push(Announcement::VirtioMmio { base, gsi });
        Ok(base)
    }

    /// Appends the parameters announcing the boot-timer page and the virtio devices
    /// (linux-loader's `virtio_mmio.device=<size>@<base>:<irq>` entries).
    pub fn announce(&self, cmdline: &mut Cmdline) -> Result<(), linux_loader::cmdline::Error> {
        for device in &self.announced {
            match device {
                Announcement::BootTimer(addr) => cmdline.insert(
                    husk_protocol::BOOT_TIMER_CMDLINE_KEY,
                    format!("{addr:#x}").as_str(),
                )?,
                Announcement::VirtioMmio { base, gsi } => {
                    cmdline.add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(*base), *gsi, None)?
                }
            }
        }
        Ok(())
    }

    /// The event-loop side of every virtio device.
    pub fn take_handlers(&mut self) -> Vec<VirtioHandler> {
        std::mem::take(&mut self.handlers)
    }
}

#[cfg(test)]
mod tests;
