//! Global descriptor table entries and their `kvm_segment` form (what the vCPU's segment
//! registers hold after the GDT has been "loaded").
//!
//! Hand-written because no rust-vmm crate offers it (Firecracker keeps the same in-tree): a
//! handful of constant descriptors.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{ArchError, GDT_ADDR, IDT_ADDR};

/// Selector index of each entry (selector = index * 8).
pub const CODE_INDEX: u8 = 1;
pub const DATA_INDEX: u8 = 2;
pub const TSS_INDEX: u8 = 3;

/// Packs a descriptor: `flags` holds the access byte (bits 0-7) and the flag nibble
/// (G, D/B, L, AVL in bits 12-15), as in Linux's `GDT_ENTRY`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The four entries for the 64-bit boot protocol: null, 64-bit code, data, TSS.
pub fn long_mode_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// The four entries for PVH's 32-bit protected-mode entry: flat 4 GiB code and data.
pub fn protected_mode_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xc09b, 0, 0xffff_ffff),
        gdt_entry(0xc093, 0, 0xffff_ffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

fn bit(entry: u64, shift: u32) -> u8 {
    u8::from((entry >> shift) & 1 == 1)
}

/// The hidden part of a segment register loaded from GDT entry `entry` at `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let g = bit(entry, 55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(entry, 47);
    kvm_segment {
        base,
        // At most 32 bits by construction (20-bit limit shifted by 12, plus 12 ones).
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g,
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// Writes `gdt` at [`GDT_ADDR`] and an empty IDT at [`IDT_ADDR`].
pub fn write_gdt<M: GuestMemoryBackend>(mem: &M, gdt: &[u64; 4]) -> Result<(), ArchError> {
    for (i, entry) in (0u64..).zip(gdt.iter()) {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i * 8))
            .map_err(|source| ArchError::Write {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| ArchError::Write {
            what: "IDT",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn entries_match_linux_encodings() {
        // Values from Linux's boot GDT (arch/x86/boot/pm.c) and Firecracker's tests.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0, 0, 0), 0);
    }

    #[test]
    fn code_segment_is_64_bit_present_and_flat() {
        let gdt = long_mode_gdt();
        let cs = segment_from_gdt(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(
            (cs.type_, cs.selector, cs.base, cs.limit),
            (0xb, 8, 0, 0xffff_ffff)
        );
        assert_eq!(cs.unusable, 0);
        let tss = segment_from_gdt(gdt[usize::from(TSS_INDEX)], TSS_INDEX);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 0x18));
    }

    #[test]
    fn protected_mode_segments_are_32_bit() {
        let gdt = protected_mode_gdt();
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!((cs.l, cs.db, cs.limit), (0, 1, 0xffff_ffff));
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.type_, ds.db, ds.selector), (3, 1, 0x10));
        let null = segment_from_gdt(gdt[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn gdt_and_idt_land_at_their_addresses() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt(&mem, &long_mode_gdt()).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let idt: u64 = mem.read_obj(GuestAddress(IDT_ADDR)).unwrap();
        assert_eq!(idt, 0);
    }
}
