//! Boot values of the MSRs Linux expects a firmware to have set, restricted to the MSRs this
//! KVM lists (`KVM_GET_MSR_INDEX_LIST`): setting an unknown MSR fails the whole ioctl.

use kvm_bindings::kvm_msr_entry;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// (index, value) pairs to set on every vCPU.
const BOOT_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
];

/// The boot MSRs that appear in `supported`.
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_msrs_are_set() {
        let got = boot_msrs(&[MSR_IA32_MISC_ENABLE, MSR_LSTAR, 0x1234]);
        let pairs: Vec<(u32, u64)> = got.iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(pairs, vec![(MSR_LSTAR, 0), (MSR_IA32_MISC_ENABLE, 1)]);
        assert!(boot_msrs(&[]).is_empty());
        let all: Vec<u32> = BOOT_MSRS.iter().map(|(i, _)| *i).collect();
        let full = boot_msrs(&all);
        assert_eq!(full.len(), BOOT_MSRS.len());
        assert!(
            full.iter()
                .any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == 0x806)
        );
    }
}
