//! Puts kernel, initramfs and command line into guest memory and writes the boot structures:
//! PVH for an ELF `vmlinux` with a PVH note (fastest: no decompression), the 64-bit Linux boot
//! protocol for a bzImage or an ELF without the note.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::regs::EntryProtocol;
use super::zero_page::InitrdPlacement;
use super::{
    ArchError, CMDLINE_ADDR, CMDLINE_MAX_LEN, HIMEM_START, e820_map, gdt, low_ram_end, mptable,
    paging, pvh, zero_page,
};

/// Offset of `startup_64` in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// What was loaded where.
#[derive(Debug, Clone, Copy)]
pub struct BootSetup {
    pub protocol: EntryProtocol,
    pub initrd: Option<InitrdPlacement>,
    pub kernel_end: u64,
}

/// Loads everything and writes every boot structure for `vcpus` processors.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    vcpus: u8,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootSetup, ArchError> {
    let read_err = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| ArchError::Read { what, path, source }
    };
    let mut kernel_file = File::open(kernel).map_err(read_err("kernel", kernel))?;
    let is_elf = {
        let mut magic = [0u8; 4];
        let n = kernel_file
            .read(&mut magic)
            .map_err(read_err("kernel", kernel))?;
        kernel_file
            .seek(SeekFrom::Start(0))
            .map_err(read_err("kernel", kernel))?;
        n == 4 && &magic == ELF_MAGIC
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded: KernelLoaderResult = if is_elf {
        Elf::load(mem, None, &mut kernel_file, himem)?
    } else {
        BzImage::load(mem, None, &mut kernel_file, himem)?
    };
    let kernel_end = loaded.kernel_load.0.saturating_add(loaded.kernel_end);

    let initrd_limit = initrd_limit(mem_size, loaded.setup_header.as_ref());
    let initrd = match initrd {
        Some(path) => Some(load_initrd(mem, path, kernel_end, initrd_limit)?),
        None => None,
    };
    let cmdline_len = write_cmdline(mem, cmdline)?;
    let e820 = e820_map(mem_size)?;
    mptable::write(mem, vcpus)?;

    let protocol = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) if is_elf => {
            pvh::write_start_info(mem, initrd, &e820)?;
            EntryProtocol::Pvh { entry: entry.0 }
        }
        _ => {
            let params = zero_page::build(loaded.setup_header, cmdline_len, initrd, &e820)?;
            zero_page::write(mem, &params)?;
            let cr3 = paging::write_identity_tables(mem)?;
            let entry = if is_elf {
                loaded.kernel_load.0
            } else {
                loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
            };
            EntryProtocol::Linux64 { entry, cr3 }
        }
    };
    let table = match protocol {
        EntryProtocol::Linux64 { .. } => gdt::long_mode_gdt(),
        EntryProtocol::Pvh { .. } => gdt::protected_mode_gdt(),
    };
    gdt::write_gdt(mem, &table)?;
    Ok(BootSetup {
        protocol,
        initrd,
        kernel_end,
    })
}

/// Highest address (exclusive) the initramfs may end at: the top of low RAM, or the kernel's
/// `initrd_addr_max` if its header has one.
fn initrd_limit(mem_size: u64, header: Option<&setup_header>) -> u64 {
    let low = low_ram_end(mem_size);
    match header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => low.min(u64::from(max) + 1),
        _ => low,
    }
}

/// Highest page-aligned address at which `size` bytes end below `limit` without overlapping
/// the kernel.
pub fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end).then_some(start)
}

fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, ArchError> {
    let read_err = |source| ArchError::Read {
        what: "initramfs",
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr =
        initrd_address(size, kernel_end, limit).ok_or(ArchError::InitrdTooBig { size, limit })?;
    let count = usize::try_from(size).map_err(|_| ArchError::InitrdTooBig { size, limit })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|source| ArchError::Write {
            what: "initramfs",
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Writes the command line (bounded by its own capacity, at most [`CMDLINE_MAX_LEN`]);
/// returns its length without the NUL.
pub fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &Cmdline,
) -> Result<usize, ArchError> {
    let len = cmdline.as_cstring()?.as_bytes().len();
    if len >= CMDLINE_MAX_LEN {
        return Err(ArchError::CmdlineTooLong {
            len,
            max: CMDLINE_MAX_LEN - 1,
        });
    }
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn initrd_goes_to_the_top_page_aligned_and_never_over_the_kernel() {
        assert_eq!(
            initrd_address(0x1800, 0x200_0000, 0x1000_0000),
            Some(0x0fff_e000)
        );
        assert_eq!(initrd_address(0x1000, 0, 0x1000), Some(0));
        assert_eq!(initrd_address(0x2000, 0, 0x1000), None);
        assert_eq!(initrd_address(0x0f00_0000, 0x200_0000, 0x1000_0000), None);
    }

    #[test]
    fn initrd_limit_honours_the_header() {
        let mut hdr = setup_header::default();
        assert_eq!(initrd_limit(256 << 20, Some(&hdr)), 256 << 20);
        hdr.initrd_addr_max = 0x7fff_ffff;
        assert_eq!(initrd_limit(4 << 30, Some(&hdr)), 0x8000_0000);
        assert_eq!(initrd_limit(4 << 30, None), super::super::MMIO_GAP_START);
    }

    fn cmdline(text: &str) -> Cmdline {
        let mut cmdline = Cmdline::new(CMDLINE_MAX_LEN).unwrap();
        cmdline.insert_str(text).unwrap();
        cmdline
    }

    #[test]
    fn cmdline_is_nul_terminated_at_0x20000_and_bounded() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(
            write_cmdline(&mem, &cmdline("console=ttyS0 quiet")).unwrap(),
            19
        );
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        let mut long = Cmdline::new(4 * CMDLINE_MAX_LEN).unwrap();
        long.insert_str("x".repeat(CMDLINE_MAX_LEN)).unwrap();
        assert!(matches!(
            write_cmdline(&mem, &long),
            Err(ArchError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn a_file_that_is_no_kernel_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("k");
        std::fs::write(&bogus, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        assert!(load(&mem, 64 << 20, 1, &bogus, None, &cmdline("")).is_err());
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(100, 0xff);
        std::fs::write(&bogus, elf).unwrap();
        assert!(load(&mem, 64 << 20, 1, &bogus, None, &cmdline("")).is_err());
        let missing = dir.path().join("missing");
        assert!(load(&mem, 64 << 20, 1, &missing, None, &cmdline("")).is_err());
    }

    /// Boot structures for the real husk kernel, as `cargo xtask build` leaves it in the
    /// artifacts directory (`$HUSK_ARTIFACTS`, which `cargo xtask test` sets after building
    /// it, else `target/husk`).
    #[test]
    fn loads_the_husk_kernel() {
        let dir = std::env::var_os("HUSK_ARTIFACTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/husk")
            });
        let (vmlinux, bzimage) = (dir.join("vmlinux"), dir.join("vmlinuz"));
        assert!(
            vmlinux.is_file() && bzimage.is_file(),
            "{} has no guest kernel: run `cargo xtask build` first",
            dir.display()
        );
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
        let setup = load(
            &mem,
            256 << 20,
            2,
            &vmlinux,
            None,
            &cmdline("console=ttyS0"),
        )
        .unwrap();
        assert!(
            matches!(setup.protocol, EntryProtocol::Pvh { .. }),
            "{setup:?}"
        );
        let setup = load(
            &mem,
            256 << 20,
            1,
            &bzimage,
            None,
            &cmdline("console=ttyS0"),
        )
        .unwrap();
        let EntryProtocol::Linux64 { entry, .. } = setup.protocol else {
            unreachable!("a bzImage boots through the 64-bit protocol");
        };
        assert_eq!(entry, HIMEM_START + 0x200);
    }
}
