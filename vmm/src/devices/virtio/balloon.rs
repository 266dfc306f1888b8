//! virtio-balloon for free page reporting only (`VIRTIO_BALLOON_F_REPORTING`): the guest
//! names free blocks of its RAM and the monitor gives their host memory back with
//! `MADV_REMOVE` on the shared guest-RAM mapping, which frees the memfd's pages for every
//! process mapping them (virtiofsd too). A later guest access reads zeros, which is what a
//! reported page may hold. The balloon never asks for memory (`num_pages` stays 0); buffers
//! on the inflate and deflate queues are returned untouched.
//!
//! The guest is hostile: a reported range is used only where it lies whole, page-aligned,
//! inside one guest-RAM region; anything else is skipped. A queue whose available index runs
//! more than a ring ahead is corrupt: the device stops and reports that it needs a reset.

use slog::{Logger, debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{Activation, IrqTrigger, Memory, TYPE_BALLOON, VirtioDevice, VirtioError, notify_used};
use husk_vsock::device::check_avail_index;

/// Queues 0 and 1 are inflate and deflate; the reporting queue comes third when only
/// `F_REPORTING` is offered (no stats or hinting queues).
const REPORTING_QUEUE: usize = 2;
/// Linux needs room for one report of `PAGE_REPORTING_CAPACITY` (32) blocks in one chain.
const QUEUE_SIZES: [u16; 3] = [32, 32, 32];
const VIRTIO_BALLOON_F_REPORTING: u64 = 5;
const PAGE_SIZE: u64 = 4096;
/// Chains taken per kick: Linux keeps one report in flight; a driver that keeps refilling the
/// ring cannot hold the event loop (the rest waits for its next kick).
const CHAINS_PER_EVENT: usize = 256;
/// `num_pages` at 0, then `actual` (what the driver says it holds), both little endian.
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: usize = 4;

pub struct Balloon {
    active: Option<Active>,
    /// `actual` as the driver last wrote it.
    actual: [u8; 4],
    broken: bool,
    log: Logger,
}

struct Active {
    mem: Memory,
    queues: Vec<Queue>,
    irq: IrqTrigger,
}

impl Balloon {
    pub fn new(log: Logger) -> Self {
        Self {
            active: None,
            actual: [0; 4],
            broken: false,
            log,
        }
    }

    /// Takes every available chain of `index`; discards what reporting chains name.
    fn process(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = a.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        if let Err(e) = check_avail_index(a.mem.as_ref(), queue) {
            warn!(self.log, "the guest corrupted a balloon queue; the device needs a reset";
                  "queue" => index, "error" => %e);
            self.active = None;
            self.broken = true;
            return;
        }
        let mut used = false;
        for _ in 0..CHAINS_PER_EVENT {
            let Some(chain) = queue.pop_descriptor_chain(a.mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            if index == REPORTING_QUEUE {
                for desc in chain {
                    discard(&a.mem, desc.addr().0, u64::from(desc.len()), &self.log);
                }
            }
            used |= queue.add_used(a.mem.as_ref(), head, 0).is_ok();
        }
        if used {
            notify_used(&a.mem, queue, &a.irq);
        }
    }
}

/// The page-aligned part of `[addr, addr + len)`, if it lies whole in one region of `mem`:
/// its host address and length.
fn host_range(mem: &Memory, addr: u64, len: u64) -> Option<(*mut u8, usize)> {
    let start = addr.checked_next_multiple_of(PAGE_SIZE)?;
    let end = addr.checked_add(len)? / PAGE_SIZE * PAGE_SIZE;
    if end <= start {
        return None;
    }
    let region = mem.find_region(GuestAddress(start))?;
    let offset = region.to_region_addr(GuestAddress(start))?;
    // Within the region: its last byte must be too.
    region.to_region_addr(GuestAddress(end - 1))?;
    let host = region.get_host_address(offset).ok()?;
    Some((host, usize::try_from(end - start).ok()?))
}

/// Gives the host memory behind a reported range back.
fn discard(mem: &Memory, addr: u64, len: u64, log: &Logger) {
    let Some((host, len)) = host_range(mem, addr, len) else {
        debug!(log, "ignoring a reported range outside guest RAM"; "addr" => addr, "len" => len);
        return;
    };
    // SAFETY: `host..host + len` lies inside a guest-RAM mapping this process owns for the
    // VM's whole life (checked by `host_range`). MADV_REMOVE frees the pages behind it and
    // leaves the mapping valid: later accesses, the guest's or a device's, read zeros.
    if unsafe { libc::madvise(host.cast(), len, libc::MADV_REMOVE) } != 0 {
        debug!(log, "could not give a reported range back";
               "addr" => addr, "error" => %std::io::Error::last_os_error());
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[ACTUAL_OFFSET..].copy_from_slice(&self.actual);
        super::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; a write must fit in it.
        let Some(rel) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_sub(ACTUAL_OFFSET))
        else {
            return;
        };
        if let Some(dst) = self.actual.get_mut(rel..rel.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        // One per declared queue; a driver without F_REPORTING leaves the third not ready.
        if a.queues.len() != QUEUE_SIZES.len() {
            return Err(VirtioError::QueueCount {
                got: a.queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            irq: a.irq,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }

    fn queue_event(&mut self, queue: usize) {
        self.process(queue);
    }
}

#[cfg(test)]
#[path = "balloon_tests.rs"]
mod tests;
