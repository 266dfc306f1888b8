//! Identity page tables for the 64-bit boot protocol: the first 1 GiB mapped with 2 MiB pages.
//! The kernel builds its own tables early; these only need to cover the kernel, the zero page,
//! the command line and the initramfs header it touches before that.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{ArchError, PDE_ADDR, PDPTE_ADDR, PML4_ADDR};

/// Present + writable.
const PRESENT_RW: u64 = 0x3;
/// Present + writable + page size (2 MiB page).
const PRESENT_RW_HUGE: u64 = 0x83;
const ENTRIES: u64 = 512;
const HUGE_PAGE: u64 = 2 << 20;

/// Writes PML4 → PDPT → PD and returns the CR3 value.
pub fn write_identity_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64, ArchError> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| ArchError::Write {
                what: "page tables",
                source,
            })
    };
    write(PDPTE_ADDR | PRESENT_RW, PML4_ADDR)?;
    write(PDE_ADDR | PRESENT_RW, PDPTE_ADDR)?;
    for i in 0..ENTRIES {
        write((i * HUGE_PAGE) | PRESENT_RW_HUGE, PDE_ADDR + i * 8)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn maps_the_first_gigabyte_one_to_one() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_ADDR), 0xa003);
        assert_eq!(read(PDPTE_ADDR), 0xb003);
        assert_eq!(read(PDE_ADDR), 0x83);
        assert_eq!(read(PDE_ADDR + 8), 0x20_0083);
        assert_eq!(read(PDE_ADDR + 511 * 8), (511 << 21) | 0x83);
        // Only one PML4/PDPT entry: nothing else mapped.
        assert_eq!(read(PML4_ADDR + 8), 0);
        assert_eq!(read(PDPTE_ADDR + 8), 0);
    }
}
