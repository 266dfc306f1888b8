//! Per-vCPU CPUID: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), with each vCPU's APIC id and
//! the VM's topology (every vCPU one core of one socket), the hypervisor bit and the TSC
//! deadline timer (emulated by KVM's LAPIC but not reported by `GET_SUPPORTED_CPUID`; with it
//! the guest skips calibrating the LAPIC timer, which costs boot time).

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
/// Leaf 1 ECX: TSC deadline timer, hypervisor present.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: multi-threading (more than one logical processor per package).
const EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (ECX bits 15:8).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` things.
fn id_bits(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

/// Adjusts one entry for vCPU `id` of `count`.
fn adjust(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let (id32, count32) = (u32::from(id), u32::from(count));
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (count32 << 16);
            e.ecx |= ECX_TSC_DEADLINE | ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_TOPOLOGY => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
            e.eax &= 0x3fff;
            e.eax |= (count32.saturating_sub(1) & 0x3f) << 26;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = id32;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count32;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX[7:0]: cores - 1; ECX[15:12]: APIC id bits for cores.
            e.ecx = (id_bits(count) << 12) | count32.saturating_sub(1);
        }
        _ => {}
    }
}

/// The CPUID table for vCPU `id` of `count` derived from KVM's supported table.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        adjust(e, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn table() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZE_IDS, 0),
            entry(0x4000_0000, 0),
        ])
        .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let supported = table();
        let c = for_vcpu(&supported, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3, "initial APIC id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(e[0].ebx & 0xffff, 0xffff, "other EBX fields kept");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].ecx >> 8), (3, 1, LEVEL_SMT));
        assert_eq!(
            (e[2].edx, e[2].ebx, e[2].eax, e[2].ecx >> 8),
            (3, 4, 2, LEVEL_CORE)
        );
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
        assert_eq!(e[4].ecx, (2 << 12) | 3);
        assert_eq!(e[5].eax, 0xffff_ffff, "KVM's own leaves untouched");
        // The supported table itself is not modified.
        assert_eq!(supported.as_slice()[0].ebx, 0xffff_ffff);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let c = for_vcpu(&table(), 0, 1);
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[0].ebx >> 16 & 0xff, 1);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(64), 6);
    }
}
