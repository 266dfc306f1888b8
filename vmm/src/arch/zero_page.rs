//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): setup header, command line, initramfs, e820 map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{ArchError, CMDLINE_ADDR, MemoryRange, ZERO_PAGE_ADDR};

/// `boot_flag` of a valid setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: not a registered loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment for an ELF image, which has no setup header of its own (16 MiB, the
/// x86_64 default `CONFIG_PHYSICAL_ALIGN`).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Entries that fit in `boot_params.e820_table`.
const E820_MAX: usize = 128;
/// The command line sits at a fixed low address.
#[allow(clippy::cast_possible_truncation)]
const CMDLINE_ADDR_32: u32 = CMDLINE_ADDR as u32;
const _: () = assert!(CMDLINE_ADDR < 1 << 32);

/// Where the initramfs was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Builds the zero page. `header` is the bzImage's setup header (absent for an ELF kernel).
pub fn build(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[MemoryRange],
) -> Result<boot_params, ArchError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR_32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initrd {
        // The initramfs is placed below the MMIO gap, so its address fits in 32 bits; the
        // size is bounded by guest memory below the gap as well.
        params.hdr.ramdisk_image =
            u32::try_from(initrd.addr).map_err(|_| ArchError::InitrdTooBig {
                size: initrd.size,
                limit: u64::from(u32::MAX),
            })?;
        params.hdr.ramdisk_size =
            u32::try_from(initrd.size).map_err(|_| ArchError::InitrdTooBig {
                size: initrd.size,
                limit: u64::from(u32::MAX),
            })?;
    }
    if e820.len() > E820_MAX {
        return Err(ArchError::MemoryTooSmall(0));
    }
    for (slot, range) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: range.kind,
        };
    }
    // At most E820_MAX (128) entries: fits in a u8.
    params.e820_entries = u8::try_from(e820.len()).unwrap_or(u8::MAX);
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`] (through linux-loader's Linux boot
/// configurator).
pub fn write<M: GuestMemoryBackend>(mem: &M, params: &boot_params) -> Result<(), ArchError> {
    let params = BootParams::new(params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<M>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{E820_RAM, e820_map};
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn elf_zero_page_has_magic_cmdline_initrd_and_e820() {
        let map = e820_map(256 << 20).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x0f00_0000,
            size: 0x60_0000,
        };
        let p = build(None, 42, Some(initrd), &map).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
        assert_eq!(
            (hdr.ramdisk_image, hdr.ramdisk_size),
            (0x0f00_0000, 0x60_0000)
        );
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        let (addr, size, kind) = (e.addr, e.size, e.r#type);
        assert_eq!(
            (addr, size, kind),
            (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM)
        );
    }

    #[test]
    fn bzimage_header_is_kept_and_completed() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            loadflags: 1,
            ..Default::default()
        };
        let p = build(Some(hdr), 10, None, &e820_map(64 << 20).unwrap()).unwrap();
        let got = p.hdr;
        assert_eq!(
            (got.version, got.kernel_alignment, got.loadflags),
            (0x020f, 0x20_0000, 1)
        );
        assert_eq!({ got.ramdisk_size }, 0);
        assert_eq!({ got.boot_flag }, 0xaa55);
    }

    #[test]
    fn zero_page_is_written_at_0x7000() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let p = build(None, 1, None, &e820_map(64 << 20).unwrap()).unwrap();
        write(&mem, &p).unwrap();
        // boot_flag lives at offset 0x1fe of the zero page, e820_entries at 0x1e8.
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1e8)).unwrap();
        assert_eq!(entries, 2);
        let cmdline: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x228)).unwrap();
        assert_eq!(cmdline, 0x20000);
    }
}
