//! Register state of the boot vCPU for both entry protocols, as plain `kvm_bindings` values
//! (applied by `kvm::vcpu`). Application processors start in wait-for-SIPI and are brought up
//! by the guest through the in-kernel LAPIC.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{
    CODE_INDEX, DATA_INDEX, TSS_INDEX, long_mode_gdt, protected_mode_gdt, segment_from_gdt,
};
use super::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word and MXCSR after `FNINIT` / reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;
/// Four 8-byte entries.
const GDT_LIMIT: u16 = 4 * 8 - 1;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryProtocol {
    /// 64-bit Linux boot protocol: long mode, identity paging, `%rsi` = zero page.
    Linux64 { entry: u64, cr3: u64 },
    /// PVH: 32-bit protected mode without paging, `%ebx` = `hvm_start_info`.
    Pvh { entry: u64 },
}

/// Everything the boot vCPU needs besides CPUID, MSRs and the LAPIC.
#[derive(Debug, Clone)]
pub struct BootRegs {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// The GDT to write at [`GDT_ADDR`].
    pub gdt: [u64; 4],
}

pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// Boot registers for `protocol`; `sregs` is the vCPU's current special registers (KVM's
/// reset state), which are modified rather than replaced.
pub fn boot_regs(protocol: EntryProtocol, mut sregs: kvm_sregs) -> BootRegs {
    let gdt = match protocol {
        EntryProtocol::Linux64 { .. } => long_mode_gdt(),
        EntryProtocol::Pvh { .. } => protected_mode_gdt(),
    };
    let code = segment_from_gdt(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = segment_from_gdt(gdt[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match protocol {
        EntryProtocol::Linux64 { entry, cr3 } => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryProtocol::Pvh { entry } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = PVH_INFO_ADDR;
        }
    }
    BootRegs {
        regs,
        sregs,
        fpu: fpu(),
        gdt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::PML4_ADDR;

    #[test]
    fn long_mode_entry_has_paging_and_zero_page() {
        let b = boot_regs(
            EntryProtocol::Linux64 {
                entry: 0x100_0200,
                cr3: PML4_ADDR,
            },
            kvm_sregs::default(),
        );
        assert_eq!(b.regs.rip, 0x100_0200);
        assert_eq!(b.regs.rsi, 0x7000);
        assert_eq!(b.regs.rsp, 0x8ff0);
        assert_eq!(b.regs.rflags, 2);
        assert_eq!(b.sregs.cr3, 0x9000);
        assert_ne!(b.sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(b.sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(b.sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((b.sregs.cs.l, b.sregs.cs.selector), (1, 8));
        assert_eq!((b.sregs.gdt.base, b.sregs.gdt.limit), (0x500, 31));
        assert_eq!(b.fpu.fcw, 0x37f);
    }

    #[test]
    fn pvh_entry_is_32_bit_protected_mode_without_paging() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010,
            efer: EFER_LME,
            ..Default::default()
        };
        let b = boot_regs(EntryProtocol::Pvh { entry: 0x100_0000 }, reset);
        assert_eq!(b.regs.rip, 0x100_0000);
        assert_eq!(b.regs.rbx, 0x6000);
        assert_eq!(b.sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((b.sregs.cr4, b.sregs.efer), (0, 0));
        assert_eq!((b.sregs.cs.db, b.sregs.cs.l), (1, 0));
        assert_eq!(b.sregs.ds.selector, 0x10);
        assert_eq!(b.sregs.tr.selector, 0x18);
    }
}
