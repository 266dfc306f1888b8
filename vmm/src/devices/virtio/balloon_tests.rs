//! The reporting balloon on memfd-backed guest RAM (as the monitor maps it): reported pages
//! go back to the host, and hostile reports touch nothing outside the pages they name whole.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::INT_VRING;
use crate::kvm::memory::create_guest_memory;
use husk_vsock::test_utils::{DriverQueue, logger};

const MEM: u64 = 32 << 20;
/// Away from the test rings (queue n at n * 64 KiB) and their buffers.
const BLOCK: u64 = 16 << 20;
const PAGE: u64 = 4096;
const PAGE32: u32 = 4096;

/// Bytes of the guest-RAM memfd that hold memory.
fn allocated(mem: &Memory) -> u64 {
    let region = mem.iter().next().unwrap();
    let file = region.file_offset().unwrap().file();
    let st = nix::sys::stat::fstat(file.as_raw_fd()).unwrap();
    u64::try_from(st.st_blocks).unwrap() * 512
}

fn active(mem: &Memory, queues: &[DriverQueue]) -> (Balloon, IrqTrigger) {
    let mut b = Balloon::new(logger());
    let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    b.activate(Activation {
        mem: mem.clone(),
        queues: queues.iter().map(DriverQueue::device_queue).collect(),
        irq: irq.clone(),
        kicks: Vec::new(),
        acked_features: b.features(),
    })
    .unwrap();
    (b, irq)
}

fn byte_at(mem: &Memory, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn reported_blocks_go_back_to_the_host() {
    let mem: Memory = Arc::new(create_guest_memory(MEM).unwrap());
    let mut queues: Vec<DriverQueue> = (0..3).map(|n| DriverQueue::new(&mem, n)).collect();
    let (mut b, irq) = active(&mem, &queues);
    mem.write_slice(&[0xa5; 1 << 20], GuestAddress(BLOCK))
        .unwrap();
    let before = allocated(&mem);
    // One report of two blocks: 64 KiB and the rest of the MiB.
    queues[REPORTING_QUEUE].post_raw(&[
        (BLOCK, 64 << 10, true),
        (BLOCK + (64 << 10), 960 << 10, true),
    ]);
    b.queue_event(REPORTING_QUEUE);
    assert_eq!(
        queues[REPORTING_QUEUE].used().len(),
        1,
        "the report is returned"
    );
    assert_ne!(irq.status() & INT_VRING, 0);
    let after = allocated(&mem);
    assert!(
        after + (1 << 20) <= before,
        "1 MiB freed: {before} → {after}"
    );
    assert_eq!(
        byte_at(&mem, BLOCK + PAGE),
        0,
        "a reported page reads as zeros"
    );
}

#[test]
fn hostile_reports_free_only_whole_pages_inside_guest_ram() {
    let mem: Memory = Arc::new(create_guest_memory(MEM).unwrap());
    let mut queues: Vec<DriverQueue> = (0..3).map(|n| DriverQueue::new(&mem, n)).collect();
    let (mut b, _irq) = active(&mem, &queues);
    mem.write_slice(&[0x5a; 64 << 10], GuestAddress(BLOCK))
        .unwrap();
    let last = MEM - PAGE;
    mem.write_obj(0x77u8, GuestAddress(last)).unwrap();
    let reporting = &mut queues[REPORTING_QUEUE];
    // Outside RAM, running past its end, wrapping the address space, smaller than a page,
    // and unaligned: only the whole pages inside the last one may go.
    reporting.post_raw(&[(1 << 40, 1 << 20, true)]);
    reporting.post_raw(&[(last, 2 * PAGE32, true)]);
    reporting.post_raw(&[(u64::MAX - PAGE + 1, u32::MAX, true)]);
    reporting.post_raw(&[(BLOCK + 1, 100, true)]);
    reporting.post_raw(&[(BLOCK + 100, 3 * PAGE32, true)]);
    b.queue_event(REPORTING_QUEUE);
    assert_eq!(reporting.used().len(), 5, "every chain is returned");
    assert_eq!(
        byte_at(&mem, last),
        0x77,
        "a range past the end frees nothing"
    );
    assert_eq!(
        byte_at(&mem, BLOCK + 101),
        0x5a,
        "a partial first page is kept"
    );
    assert_eq!(
        byte_at(&mem, BLOCK + PAGE),
        0,
        "the whole pages inside went"
    );
    assert_eq!(byte_at(&mem, BLOCK + 2 * PAGE), 0);
    assert_eq!(
        byte_at(&mem, BLOCK + 3 * PAGE),
        0x5a,
        "the partial last page is kept"
    );

    // Inflate and deflate buffers come back untouched.
    queues[0].post_raw(&[(BLOCK + 8 * PAGE, PAGE32, false)]);
    b.queue_event(0);
    assert_eq!(queues[0].used().len(), 1);
    assert_eq!(byte_at(&mem, BLOCK + 8 * PAGE), 0x5a);

    // A ring index more than a ring ahead: the device stops until reset.
    queues[REPORTING_QUEUE].set_avail_idx(1000);
    b.queue_event(REPORTING_QUEUE);
    assert!(b.needs_reset());
    b.reset();
    assert!(!b.needs_reset());
}

#[test]
fn config_holds_no_request_and_keeps_actual() {
    let mut b = Balloon::new(logger());
    assert_eq!(b.device_type(), 5);
    assert_eq!(b.queue_max_sizes().len(), 3);
    b.write_config(4, &7u32.to_le_bytes());
    // Writes to num_pages or past the end are not the driver's to make.
    b.write_config(0, &9u32.to_le_bytes());
    b.write_config(6, &[1, 2, 3, 4]);
    b.write_config(u64::MAX, &[1]);
    let mut config = [0xffu8; 12];
    b.read_config(0, &mut config);
    assert_eq!(config, [0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
}
