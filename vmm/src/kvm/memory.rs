//! Guest RAM: one memfd, mapped shared, so vhost-user backends (virtiofsd) can map the same
//! pages; one KVM memory slot per contiguous range (below and above the MMIO gap).

use std::fs::File;

use kvm_bindings::kvm_userspace_memory_region;
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::{KvmError, Vm, ioctl};
use crate::arch::ram_regions;

fn memory<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> KvmError {
    move |e| KvmError::Memory {
        what,
        source: Box::new(e),
    }
}

/// Allocates `size` bytes of memfd-backed guest RAM laid out around the MMIO gap.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, KvmError> {
    let fd = memfd_create(c"husk-guest-ram", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(memory("creating the guest RAM memfd"))?;
    let file = File::from(fd);
    file.set_len(size).map_err(memory("sizing guest RAM"))?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_regions(size) {
        let clone = file
            .try_clone()
            .map_err(memory("duplicating the guest RAM memfd"))?;
        let len_usize = usize::try_from(len).map_err(|_| KvmError::GuestTooLarge(len))?;
        ranges.push((addr, len_usize, Some(FileOffset::new(clone, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(memory("mapping guest RAM"))
}

/// Gives every region of `mem` to the VM as a memory slot.
pub fn register(vm: &Vm, mem: &GuestMemoryMmap) -> Result<(), KvmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(memory("finding a guest RAM region's host address"))?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // the monitor keeps for the whole life of the VM (it is dropped only at process exit).
        unsafe { vm.fd().set_user_memory_region(desc) }.map_err(ioctl("SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Whether `addr` is guest RAM (not in the MMIO gap or past the end).
pub fn is_ram(mem: &GuestMemoryMmap, addr: u64) -> bool {
    mem.address_in_range(GuestAddress(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn memory_is_file_backed_and_split_around_the_gap() {
        let mem = create_guest_memory(256 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert!(region.file_offset().is_some(), "memfd-backed, shareable");
        assert!(is_ram(&mem, 0x100_0000));
        assert!(!is_ram(&mem, 256 << 20));

        // Virtual size only: pages are not touched.
        let big = create_guest_memory(MMIO_GAP_START + (64 << 20)).unwrap();
        assert_eq!(big.num_regions(), 2);
        let high = big.iter().nth(1).unwrap();
        assert_eq!(high.start_addr().0, MMIO_GAP_END);
        assert_eq!(high.file_offset().unwrap().start(), MMIO_GAP_START);
        assert!(!is_ram(&big, MMIO_GAP_START));
    }
}
