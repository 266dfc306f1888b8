//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns about its
//! vCPUs, the IOAPIC and how ISA IRQs are wired (the husk guest kernel has `CONFIG_ACPI=n`
//! and `CONFIG_X86_MPPARSE=y`).
//!
//! Layout at [`EBDA_START`]: the 16-byte floating pointer, then the configuration table
//! (header, one processor entry per vCPU, the ISA bus, the IOAPIC, one interrupt entry per
//! IOAPIC pin, and the two local interrupt entries for LINT0/LINT1). Built as bytes, so the
//! checksums are easy to verify.
//!
//! Hand-written because no maintained rust-vmm crate writes MP tables (Firecracker and
//! Cloud Hypervisor each carry their own, in-tree), and it is small and checksummed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{ArchError, EBDA_START, HIMEM_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR};

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SHORT_ENTRY_LEN: usize = 8;
const SPEC_REV: u8 = 4;
/// Local APIC version of a Pentium-4-era integrated APIC, as KVM emulates.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature; FPU + APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// The fixed APIC addresses are below 4 GiB; IRQ lines fit in a byte (asserted below).
#[allow(clippy::cast_possible_truncation)]
const LAPIC_ADDR_32: [u8; 4] = (LAPIC_ADDR as u32).to_le_bytes();
#[allow(clippy::cast_possible_truncation)]
const IOAPIC_ADDR_32: [u8; 4] = (IOAPIC_ADDR as u32).to_le_bytes();
#[allow(clippy::cast_possible_truncation)]
const IRQ_MAX_8: u8 = IRQ_MAX as u8;
const _: () = assert!(LAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(IOAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(IRQ_MAX <= u8::MAX as u32);

/// Size of the tables for `vcpus` processors.
pub fn table_size(vcpus: u8) -> usize {
    let interrupts = IRQ_MAX as usize + 1;
    FLOATING_LEN
        + HEADER_LEN
        + PROCESSOR_LEN * usize::from(vcpus)
        + SHORT_ENTRY_LEN * (2 + interrupts + 2)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The tables as they must appear at `base` for `vcpus` processors (APIC ids 0..vcpus).
pub fn build(base: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus.saturating_add(1);
    let mut table = Vec::with_capacity(table_size(vcpus) - FLOATING_LEN);
    // Header; length, entry count and checksum are patched below.
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&[0, 0, SPEC_REV, 0]);
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"husk-vmm    ");
    table.extend_from_slice(&[0; 4 + 2 + 2]); // OEM table pointer, size, entry count
    table.extend_from_slice(&LAPIC_ADDR_32);
    table.extend_from_slice(&[0; 4]);
    let mut entries: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        table.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        table.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        table.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        table.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    table.extend_from_slice(&[ENTRY_BUS, 0]);
    table.extend_from_slice(b"ISA   ");
    table.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    table.extend_from_slice(&IOAPIC_ADDR_32);
    entries += 2;
    for irq in 0..=IRQ_MAX_8 {
        // Conforming polarity and trigger: ISA defaults (edge, active high).
        table.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        entries += 1;
    }
    table.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    table.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;
    // The table is a few hundred bytes plus 20 per vCPU (at most 255): fits in u16.
    let len = u16::try_from(table.len()).unwrap_or(u16::MAX);
    table[4..6].copy_from_slice(&len.to_le_bytes());
    table[34..36].copy_from_slice(&entries.to_le_bytes());
    table[7] = checksum(&table);

    let config_addr = base + FLOATING_LEN as u64;
    let mut out = Vec::with_capacity(table_size(vcpus));
    out.extend_from_slice(b"_MP_");
    // `write` only places the tables below 1 MiB; elsewhere the pointer is unusable anyway.
    out.extend_from_slice(&u32::try_from(config_addr).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    out
}

/// Writes the tables at [`EBDA_START`].
pub fn write<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), ArchError> {
    if EBDA_START + table_size(vcpus) as u64 > HIMEM_START {
        return Err(ArchError::MpTableTooBig(u32::from(vcpus)));
    }
    mem.write_slice(&build(EBDA_START, vcpus), GuestAddress(EBDA_START))
        .map_err(|source| ArchError::Write {
            what: "MP table",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_lengths_are_valid() {
        for vcpus in [1u8, 2, 64, 255] {
            let t = build(EBDA_START, vcpus);
            assert_eq!(t.len(), table_size(vcpus));
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let config = &t[16..];
            assert_eq!(&config[..4], b"PCMP");
            let len = u16::from_le_bytes([config[4], config[5]]);
            assert_eq!(usize::from(len), config.len());
            assert_eq!(sum(config), 0, "configuration table checksum");
            let pointer = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(pointer), EBDA_START + 16);
            let count = u16::from_le_bytes([config[34], config[35]]);
            assert_eq!(usize::from(count), usize::from(vcpus) + 2 + 24 + 2);
        }
    }

    #[test]
    fn processors_have_sequential_apic_ids_and_one_bsp() {
        let t = build(EBDA_START, 4);
        let cpus = &t[16 + HEADER_LEN..16 + HEADER_LEN + 4 * PROCESSOR_LEN];
        for (i, cpu) in cpus.chunks(PROCESSOR_LEN).enumerate() {
            assert_eq!(cpu[0], ENTRY_PROCESSOR);
            assert_eq!(usize::from(cpu[1]), i);
            assert_eq!(cpu[3] & CPU_BSP != 0, i == 0);
            assert_ne!(cpu[3] & CPU_ENABLED, 0);
        }
        let ioapic = &t[16 + HEADER_LEN + 4 * PROCESSOR_LEN + 8..][..8];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], 5, "IOAPIC id follows the CPUs");
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn written_below_one_mebibyte() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        write(&mem, 64).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
        assert!(EBDA_START + table_size(255) as u64 <= HIMEM_START);
    }
}
