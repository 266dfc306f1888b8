//! COM1: a 16550A UART (`vm-superio`) whose transmit side goes to the monitor's stdout, which
//! the shim forwards to the pod log line by line (rate limited there). The guest has no input.

use std::io::Write;

use slog::{Logger, debug};
use vm_superio::{Serial as Uart, Trigger, serial::NoEvents};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// COM1's I/O ports and IRQ line.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt through an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct Serial<W: Write + Send> {
    uart: Uart<EventFdTrigger, NoEvents, W>,
    log: Logger,
}

impl<W: Write + Send> Serial<W> {
    pub fn new(irq: EventFd, out: W, log: Logger) -> Self {
        Self {
            uart: Uart::new(EventFdTrigger(irq), out),
            log,
        }
    }

    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *value) {
                // A closed stdout (shim gone) must not stop the guest.
                debug!(self.log, "serial write failed"; "error" => ?e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_THR_EMPTY: u8 = 0x20;

    fn serial() -> Serial<Vec<u8>> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Serial::new(irq, Vec::new(), Logger::root(slog::Discard, slog::o!()))
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let mut s = serial();
        for b in b"hello\n" {
            s.write(THR, &[*b]);
        }
        assert_eq!(s.output(), b"hello\n");
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_THR_EMPTY, 0, "transmitter is always ready");
    }

    #[test]
    fn enabling_thr_interrupts_raises_the_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let mut s = Serial::new(irq, Vec::new(), Logger::root(slog::Discard, slog::o!()));
        s.write(IER, &[0x02]);
        s.write(THR, b"x");
        assert!(probe.read().unwrap() >= 1);
    }

    #[test]
    fn odd_sized_and_out_of_range_accesses_are_harmless() {
        let mut s = serial();
        let mut wide = [0u8; 4];
        s.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        s.write(0, &[1, 2]);
        s.write(1 << 40, &[1]);
        s.write(7, &[]);
        assert!(s.output().is_empty());
    }
}
