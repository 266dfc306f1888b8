//! PVH boot (xenbits.xen.org/docs/unstable/misc/pvh.html): the kernel is entered in 32-bit
//! protected mode at the address in its `XEN_ELFNOTE_PHYS32_ENTRY` note with `%ebx` pointing
//! at an `hvm_start_info` that lists the command line, the initramfs and the memory map.
//! Faster than the bzImage path: no decompressor, no real-mode setup code.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::zero_page::InitrdPlacement;
use super::{
    ArchError, CMDLINE_ADDR, MemoryRange, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR,
};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 has the memory map fields.
const START_INFO_VERSION: u32 = 1;
/// Memory map entries that fit in the page at [`PVH_MEMMAP_ADDR`].
const MAX_MEMMAP_ENTRIES: usize = 0x1000 / std::mem::size_of::<hvm_memmap_table_entry>();

/// Writes the start info, module list and memory map (through linux-loader's PVH boot
/// configurator).
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdPlacement>,
    memmap: &[MemoryRange],
) -> Result<hvm_start_info, ArchError> {
    if memmap.len() > MAX_MEMMAP_ENTRIES {
        return Err(ArchError::MemoryTooSmall(0));
    }
    let entries: Vec<hvm_memmap_table_entry> = memmap
        .iter()
        .map(|range| hvm_memmap_table_entry {
            addr: range.addr,
            size: range.size,
            type_: range.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        // Bounded by MAX_MEMMAP_ENTRIES above.
        memmap_entries: u32::try_from(entries.len()).unwrap_or(0),
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|initrd| hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&entries, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::e820_map;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn start_info_points_at_cmdline_modules_and_memmap() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let map = e820_map(128 << 20).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x700_0000,
            size: 0x1234,
        };
        write_start_info(&mem, Some(initrd), &map).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        let (magic, version, nr, modlist) = (
            info.magic,
            info.version,
            info.nr_modules,
            info.modlist_paddr,
        );
        assert_eq!(
            (magic, version, nr, modlist),
            (XEN_HVM_START_MAGIC, 1, 1, 0x6040)
        );
        let (cmdline, memmap, entries) =
            (info.cmdline_paddr, info.memmap_paddr, info.memmap_entries);
        assert_eq!((cmdline, memmap, entries), (0x20000, 0x7000, 2));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        let (paddr, size) = (module.paddr, module.size);
        assert_eq!((paddr, size), (0x700_0000, 0x1234));
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 24)).unwrap();
        let (addr, kind) = (second.addr, second.type_);
        assert_eq!((addr, kind), (0x10_0000, 1));
    }

    #[test]
    fn without_initrd_there_are_no_modules() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let info = write_start_info(&mem, None, &e820_map(64 << 20).unwrap()).unwrap();
        let (nr, modlist) = (info.nr_modules, info.modlist_paddr);
        assert_eq!((nr, modlist), (0, 0));
    }
}
