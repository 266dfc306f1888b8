//! Tells the monitor's boot-timer device that the agent is ready: one byte written to the
//! physical page the monitor names on the kernel command line (`husk.boot_timer=0x…`),
//! through `/dev/mem`. Monitors without the device (QEMU) don't pass the key, so nothing is
//! written where some other device might live. An MMIO write exits to the monitor like any
//! virtio-mmio register access, which is why this is preferred over port I/O (whose
//! permission bitmap is not reliably honoured under nested virtualization).

use std::os::fd::AsFd;

use husk_protocol::{BOOT_TIMER_CMDLINE_KEY, BOOT_TIMER_MAGIC};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use thiserror::Error;

const DEV_MEM: &str = "/dev/mem";
const PAGE: usize = 4096;

#[derive(Debug, Error)]
pub enum BootTimerError {
    #[error("{BOOT_TIMER_CMDLINE_KEY}={0:?} is not a page-aligned hexadecimal address")]
    BadAddress(String),
    #[error("opening {DEV_MEM}: {0}")]
    Open(std::io::Error),
    #[error("mapping the boot-timer page: {0}")]
    Map(nix::Error),
}

/// The boot-timer page the monitor announced, if any.
pub fn address(cmdline: &str) -> Result<Option<u64>, BootTimerError> {
    let Some(raw) = crate::cmdline::value(cmdline, BOOT_TIMER_CMDLINE_KEY) else {
        return Ok(None);
    };
    let hex = raw.strip_prefix("0x").unwrap_or(raw);
    match u64::from_str_radix(hex, 16) {
        Ok(addr) if addr % PAGE as u64 == 0 && addr != 0 => Ok(Some(addr)),
        _ => Err(BootTimerError::BadAddress(raw.to_string())),
    }
}

/// Writes the ready marker to the boot-timer page at `addr`.
pub fn signal_ready(addr: u64) -> Result<(), BootTimerError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV_MEM)
        .map_err(BootTimerError::Open)?;
    let offset =
        i64::try_from(addr).map_err(|_| BootTimerError::BadAddress(format!("{addr:#x}")))?;
    let len = std::num::NonZeroUsize::new(PAGE).ok_or(BootTimerError::Map(nix::Error::EINVAL))?;
    // SAFETY: maps one page of device memory (not RAM) that nothing else in this process
    // uses; it is unmapped below and never turned into a reference.
    let page = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file.as_fd(),
            offset,
        )
    }
    .map_err(BootTimerError::Map)?;
    // SAFETY: `page` points at the mapped page; a volatile byte store is the device access.
    unsafe { page.cast::<u8>().as_ptr().write_volatile(BOOT_TIMER_MAGIC) };
    // SAFETY: unmapping exactly the mapping created above.
    unsafe { munmap(page, PAGE) }.map_err(BootTimerError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_announced_page() {
        assert_eq!(
            address("console=ttyS0 husk.boot_timer=0xd0000000 quiet").unwrap(),
            Some(0xd000_0000)
        );
        assert_eq!(address("console=ttyS0").unwrap(), None);
        assert!(address("husk.boot_timer=0xd0000010").is_err());
        assert!(address("husk.boot_timer=nope").is_err());
        assert!(address("husk.boot_timer=0").is_err());
    }
}
