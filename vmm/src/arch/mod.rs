//! x86_64 machine layout and boot protocol: where the monitor puts what in guest memory, and
//! the register state the boot vCPU starts with. Pure data over `vm-memory`; no KVM calls
//! (the `kvm` module applies [`regs::BootRegs`] to a vCPU).
//!
//! Guest physical layout (Firecracker's, see `shared/anchors.md`):
//!
//! | address | content |
//! |---|---|
//! | `0x500` | GDT (4 entries), IDT right after it |
//! | `0x6000` | PVH `hvm_start_info`, module list at `0x6040` |
//! | `0x7000` | Linux zero page (`boot_params`), or the PVH memory map |
//! | `0x8ff0` | boot stack pointer |
//! | `0x9000`–`0xb000` | identity page tables (PML4, PDPT, PD: first 1 GiB, 2 MiB pages) |
//! | `0x20000` | kernel command line |
//! | `0x9fc00` | MP table (SMP description; the guest has no ACPI) |
//! | `0x100000` | kernel |
//! | top of low RAM | initramfs |
//! | `0xd000_0000`–4 GiB | MMIO gap: boot timer page, virtio-mmio devices, IOAPIC, LAPIC |
//! | 4 GiB+ | RAM beyond the gap, if any |

pub mod gdt;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;

use vm_memory::GuestAddress;

/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table (empty: the kernel installs its own before enabling interrupts).
pub const IDT_ADDR: u64 = 0x520;
/// PVH start info, read by the kernel's PVH entry code (`%ebx` points here).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// Linux zero page for the 64-bit boot protocol (`%rsi` points here).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// PVH memory map; shares the zero page's page because only one protocol is used per boot.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Initial stack of the boot vCPU (64-bit protocol).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// x86's `COMMAND_LINE_SIZE`, terminating NUL included (the launch contract says so too).
pub const CMDLINE_MAX_LEN: usize = husk_vmm_config::MAX_CMDLINE_LEN;
/// Start of the extended BIOS data area; the MP table goes here. RAM in the e820 map ends at
/// this address below 1 MiB, so the guest never reuses the table's memory.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy hole; the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (768 MiB below 4 GiB, as Firecracker).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap: RAM resumes at 4 GiB.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The boot timer's MMIO page: the first page of the gap, never handed to virtio devices.
pub const BOOT_TIMER_MMIO_ADDR: u64 = MMIO_GAP_START;
/// Virtio-mmio devices are allocated from here up to the IOAPIC.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// IOAPIC and local APIC (fixed by the architecture; emulated in the kernel).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map (real-mode emulation on
/// Intel); both sit at the top of the gap, away from device addresses.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Highest IRQ line of the IOAPIC (24 pins).
pub const IRQ_MAX: u32 = 23;
/// IRQ lines handed to virtio devices (0-4 are the legacy PC devices).
pub const IRQ_VIRTIO_BASE: u32 = 5;
/// E820 memory types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

// The fixed areas must not overlap.
const _: () = {
    assert!(GDT_ADDR + 4 * 8 <= IDT_ADDR);
    assert!(PVH_INFO_ADDR + 56 <= PVH_MODLIST_ADDR);
    assert!(ZERO_PAGE_ADDR + 0x1000 <= PML4_ADDR);
    assert!(BOOT_STACK_POINTER < PML4_ADDR);
    assert!(PDE_ADDR + 0x1000 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_LEN as u64 <= EBDA_START);
    assert!(VIRTIO_MMIO_START < IOAPIC_ADDR && IOAPIC_ADDR < LAPIC_ADDR);
    assert!(LAPIC_ADDR < KVM_IDENTITY_MAP_ADDR && KVM_TSS_ADDR + 0x3000 <= MMIO_GAP_END);
};

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("guest memory of {0} MiB is too small")]
    MemoryTooSmall(u64),
    #[error("writing {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("loading the kernel: {0}")]
    Kernel(#[from] linux_loader::loader::Error),
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the initramfs ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing the boot parameters: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
    #[error("the MP table for {0} vCPUs does not fit below 1 MiB")]
    MpTableTooBig(u32),
}

/// One e820 entry (also the PVH memory map's entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM ranges for `mem_size` bytes: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// End of RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The memory map the guest sees: RAM below the EBDA, RAM from 1 MiB to the gap, RAM above
/// 4 GiB. The legacy hole (EBDA, VGA, BIOS) is left out, which makes it reserved.
pub fn e820_map(mem_size: u64) -> Result<Vec<MemoryRange>, ArchError> {
    // The kernel, page tables and initramfs need room above 1 MiB.
    if mem_size < HIMEM_START + (8 << 20) {
        return Err(ArchError::MemoryTooSmall(mem_size >> 20));
    }
    let ram = |addr, size| MemoryRange {
        addr,
        size,
        kind: E820_RAM,
    };
    let mut map = vec![
        ram(0, EBDA_START),
        ram(HIMEM_START, low_ram_end(mem_size) - HIMEM_START),
    ];
    if mem_size > MMIO_GAP_START {
        map.push(ram(MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_and_three_e820_ranges_never_hit_the_gap() {
        let mib = 1 << 20;
        assert_eq!(ram_regions(256 * mib), vec![(GuestAddress(0), 256 * mib)]);
        let map = e820_map(256 * mib).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[0],
            MemoryRange {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, 256 * mib);
    }

    #[test]
    fn large_memory_is_split_around_the_mmio_gap() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            regions[1],
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START)
        );
        let map = e820_map(size).unwrap();
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        let total: u64 = map.iter().map(|r| r.size).sum();
        assert_eq!(total, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn tiny_memory_is_refused() {
        assert!(matches!(
            e820_map(4 << 20),
            Err(ArchError::MemoryTooSmall(4))
        ));
    }
}
