//! The virtio-mmio transport, version 2 (virtio spec 4.2.2): one 4 KiB register window per
//! device. The guest driver is hostile: every register access is checked for size, state and
//! range; anything else is ignored (and logged at debug level) rather than trusted.
//!
//! The transport keeps the queue registers as plain values and builds `virtio_queue::Queue`s
//! only at `DRIVER_OK`, after validating them against guest memory; the device owns its
//! queues from then on, so register reads never race with queue processing.

use slog::{Logger, debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, INT_CONFIG, IrqTrigger, Memory, VirtioDevice};
use crate::devices::BusDevice;

pub const MMIO_WINDOW: u64 = 0x1000;
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "HUSK", little endian.
const VENDOR_ID: u32 = 0x4b53_5548;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// Register state of one queue as the driver programmed it.
#[derive(Debug, Default, Clone, Copy)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: (u32, u32),
    driver: (u32, u32),
    device: (u32, u32),
}

impl QueueRegs {
    fn build(&self) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(self.size).ok()?;
        q.set_desc_table_address(Some(self.desc.0), Some(self.desc.1));
        q.set_avail_ring_address(Some(self.driver.0), Some(self.driver.1));
        q.set_used_ring_address(Some(self.device.0), Some(self.device.1));
        q.set_ready(self.ready);
        Some(q)
    }
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Memory,
    irq: IrqTrigger,
    kicks: Vec<EventFd>,
    queues: Vec<QueueRegs>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    log: Logger,
}

impl MmioTransport {
    /// `kicks`: one eventfd per queue (the same ones KVM signals on `QueueNotify` writes).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        irq: IrqTrigger,
        kicks: Vec<EventFd>,
        log: Logger,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max_size| QueueRegs {
                max_size,
                size: max_size,
                ..Default::default()
            })
            .collect();
        Self {
            device,
            mem,
            irq,
            kicks,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            log,
        }
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// A kick of `queue`: the device processes it (only once activated).
    pub fn queue_event(&mut self, queue: usize) {
        if self.activated {
            self.device.queue_event(queue);
            self.check_device_health();
        }
    }

    /// Host fd `index` of the device is ready.
    pub fn host_event(&mut self, index: usize) {
        self.device.host_event(index);
        self.check_device_health();
    }

    fn check_device_health(&mut self) {
        if self.device.needs_reset() && self.status & STATUS_NEEDS_RESET == 0 {
            warn!(
                self.log,
                "device needs a reset after the guest corrupted a queue"
            );
            self.needs_reset();
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => (self.device.features() & 0xffff_ffff) as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.irq.status(),
            REG_STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            // The config space never changes under the driver.
            REG_CONFIG_GENERATION => 0,
            _ => {
                debug!(self.log, "read of unknown virtio-mmio register"; "offset" => offset);
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let queue_ok = self.queue_config_allowed();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.irq.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH
                if !queue_ok =>
            {
                debug!(self.log, "queue register written in the wrong state";
                       "offset" => offset, "status" => self.status);
            }
            REG_QUEUE_NUM => self.with_queue(|q| q.size = u16::try_from(value).unwrap_or(0)),
            REG_QUEUE_READY => self.with_queue(|q| q.ready = value == 1),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.desc.0 = value),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.desc.1 = value),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.driver.0 = value),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.driver.1 = value),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.device.0 = value),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.device.1 = value),
            _ => debug!(self.log, "write to unknown virtio-mmio register"; "offset" => offset),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut QueueRegs)) {
        match self.selected_queue() {
            Some(q) => f(q),
            None => debug!(self.log, "queue register for a queue that does not exist";
                           "queue" => self.queue_select),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status != STATUS_ACKNOWLEDGE | STATUS_DRIVER {
            debug!(self.log, "driver features written in the wrong state"; "status" => self.status);
            return;
        }
        let offered = self.device.features();
        let (shift, mask) = match self.driver_features_select {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000),
            _ => return,
        };
        let acked = (u64::from(value) << shift) & offered;
        if acked != u64::from(value) << shift {
            debug!(self.log, "driver acked features the device does not offer"; "value" => value);
        }
        self.driver_features = (self.driver_features & !mask) | acked;
    }

    fn notify(&self, value: u32) {
        // Normally caught by KVM's ioeventfd before reaching here; forward to the same fd.
        match usize::try_from(value).ok().and_then(|i| self.kicks.get(i)) {
            Some(kick) => {
                let _ = kick.write(1);
            }
            None => debug!(self.log, "notify for a queue that does not exist"; "queue" => value),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        let current = self.status;
        let added = value & !current;
        let valid = value & current == current
            && match added {
                STATUS_ACKNOWLEDGE => current == 0,
                STATUS_DRIVER => current == STATUS_ACKNOWLEDGE,
                STATUS_FEATURES_OK => current == STATUS_ACKNOWLEDGE | STATUS_DRIVER,
                STATUS_DRIVER_OK => {
                    current == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
                }
                0 => true,
                _ => false,
            };
        if !valid {
            debug!(self.log, "invalid device status transition"; "from" => current, "to" => value);
            return;
        }
        match added {
            // Modern transports require VERSION_1; refusing FEATURES_OK fails the probe.
            STATUS_FEATURES_OK if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 => {
                debug!(self.log, "driver did not accept VIRTIO_F_VERSION_1");
            }
            STATUS_DRIVER_OK => {
                self.status = value;
                self.activate();
            }
            _ => self.status = value,
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, regs) in self.queues.iter().enumerate() {
            let valid = regs
                .build()
                .filter(|q| !q.ready() || q.is_valid(self.mem.as_ref()));
            match valid {
                Some(q) => queues.push(q),
                None => {
                    warn!(self.log, "driver configured an invalid queue"; "queue" => i);
                    return self.needs_reset();
                }
            }
        }
        let kicks = self
            .kicks
            .iter()
            .filter_map(|k| k.try_clone().ok())
            .collect();
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            irq: self.irq.clone(),
            kicks,
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn!(self.log, "device activation failed"; "error" => %e);
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        let _ = self.irq.trigger(INT_CONFIG);
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            *q = QueueRegs {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            };
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.irq.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            return self.device.read_config(offset - CONFIG_SPACE, data);
        }
        if data.len() != 4 || offset % 4 != 0 {
            debug!(self.log, "bad virtio-mmio register read"; "offset" => offset, "len" => data.len());
            return data.fill(0);
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            return self.device.write_config(offset - CONFIG_SPACE, data);
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_reg(offset, u32::from_le_bytes(bytes)),
            _ => {
                debug!(self.log, "bad virtio-mmio register write"; "offset" => offset, "len" => data.len())
            }
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
