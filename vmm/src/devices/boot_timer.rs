//! Boot timer: the guest writes [`BOOT_TIMER_MAGIC`] once when its init is up, and the monitor
//! logs how long that took since the VM was created ("guest reached init after N ms"): the
//! cheapest boot-to-init measurement (Firecracker has the same device).
//!
//! The device is one MMIO page whose address the monitor announces on the kernel command line
//! (`husk.boot_timer=0x…`); the agent writes the marker through `/dev/mem`
//! (`CONFIG_DEVMEM=y`). MMIO rather than an I/O port: under nested KVM a port write from
//! guest userspace faulted even with `ioperm`, while MMIO exits like any virtio register
//! access.

use std::time::{Duration, Instant};

use husk_protocol::BOOT_TIMER_MAGIC;
use slog::{Logger, info};

use super::BusDevice;

/// Size of the MMIO window (one page at `arch::BOOT_TIMER_MMIO_ADDR`).
pub const BOOT_TIMER_MMIO_LEN: u64 = 0x1000;

pub struct BootTimer {
    start: Instant,
    reported: Option<Duration>,
    log: Logger,
}

impl BootTimer {
    /// `start`: when the VM was created.
    pub fn new(start: Instant, log: Logger) -> Self {
        Self {
            start,
            reported: None,
            log,
        }
    }

    pub fn reported(&self) -> Option<Duration> {
        self.reported
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // Only the first magic write counts: a guest cannot flood the log.
        if data.first() == Some(&BOOT_TIMER_MAGIC) && self.reported.is_none() {
            let elapsed = self.start.elapsed();
            self.reported = Some(elapsed);
            info!(self.log, "guest reached init after {} ms", elapsed.as_millis();
                  "boot_ms" => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_magic_write_only() {
        let start = Instant::now();
        let mut t = BootTimer::new(start, Logger::root(slog::Discard, slog::o!()));
        t.write(0, &[1]);
        t.write(0, &[]);
        assert!(t.reported().is_none());
        std::thread::sleep(Duration::from_millis(5));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        let first = t.reported().unwrap();
        assert!(first >= Duration::from_millis(5));
        t.write(0x10, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        assert_eq!(t.reported(), Some(first));
        let mut data = [0xffu8; 4];
        t.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
