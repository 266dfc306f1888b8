//! What a vCPU looked like when it stopped with `KVM_EXIT_SHUTDOWN`, which KVM reports for
//! every triple fault. husk's guest reboots through the i8042 (`reboot=k`), so a triple fault
//! is a crash — unless the kernel was told `reboot=t` (an empty IDT, then `int3`), which the
//! IDT shows. For a crash the registers, the pending exception and the code and stack bytes
//! go to the log, because the guest had no chance to print anything. On AMD (SVM) KVM
//! reinitialises the vCPU on a shutdown exit, so the registers read back are the reset
//! state; the dump says so rather than pretending they are the crash site.

use std::fmt::Write as _;

use kvm_bindings::{kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Code bytes shown around the faulting instruction pointer.
const CODE_BYTES: usize = 16;
/// Stack quadwords shown from the stack pointer up.
const STACK_QWORDS: u64 = 8;

/// How a shutdown exit came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    /// The guest reset itself on purpose (empty IDT: Linux's `reboot=t`).
    Reboot,
    /// A triple fault the guest did not ask for; the string is the register dump.
    Crash(String),
}

/// Classifies a shutdown exit of `fd` (read right after the exit, before any other run).
/// `mem`: guest memory, for the code and stack bytes.
pub fn shutdown(fd: &VcpuFd, mem: Option<&GuestMemoryMmap>) -> Shutdown {
    let sregs = match fd.get_sregs() {
        Ok(s) => s,
        Err(e) => return Shutdown::Crash(format!("(registers unreadable: {e})")),
    };
    if sregs.idt.limit == 0 {
        return Shutdown::Reboot;
    }
    let mut out = String::new();
    if is_reset_state(&sregs) {
        out.push_str(
            "(registers lost: KVM reset the vCPU on the shutdown exit, as it does on AMD) ",
        );
    }
    if let Ok(r) = fd.get_regs() {
        let _ = write!(
            out,
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} rbp={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        );
        if let Some(mem) = mem {
            let _ = write!(
                out,
                " code@rip=[{}] stack=[{}]",
                code_bytes(fd, mem, r.rip),
                stack_qwords(fd, mem, r.rsp)
            );
        }
    }
    let _ = write!(
        out,
        " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={} ss={} tr={} \
         gdt={:#x}/{:#x} idt={:#x}/{:#x}",
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        segment(&sregs.cs),
        segment(&sregs.ss),
        segment(&sregs.tr),
        sregs.gdt.base,
        sregs.gdt.limit,
        sregs.idt.base,
        sregs.idt.limit
    );
    if let Ok(ev) = fd.get_vcpu_events() {
        let _ = write!(
            out,
            " exception(nr={} injected={} pending={} error={:#x}) nmi(injected={} pending={} \
             masked={}) interrupt(injected={} nr={})",
            ev.exception.nr,
            ev.exception.injected,
            ev.exception.pending,
            ev.exception.error_code,
            ev.nmi.injected,
            ev.nmi.pending,
            ev.nmi.masked,
            ev.interrupt.injected,
            ev.interrupt.nr
        );
    }
    Shutdown::Crash(out)
}

/// CS at the reset vector's segment and paging and protection off: the state of a vCPU that
/// was just reset, not one that was running the guest.
fn is_reset_state(sregs: &kvm_sregs) -> bool {
    sregs.cs.selector == 0xf000 && sregs.cs.base == 0xffff_0000 && sregs.cr0 & 1 == 0
}

fn segment(s: &kvm_segment) -> String {
    format!(
        "{:#x}(base={:#x} limit={:#x} type={} l={} dpl={} p={})",
        s.selector, s.base, s.limit, s.type_, s.l, s.dpl, s.present
    )
}

/// Guest-physical address of `gva` in the vCPU's current address space.
fn translate(fd: &VcpuFd, gva: u64) -> Option<u64> {
    let t = fd.translate_gva(gva).ok()?;
    (t.valid != 0).then_some(t.physical_address)
}

fn code_bytes(fd: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> String {
    let mut buf = [0u8; CODE_BYTES];
    match translate(fd, rip).map(|pa| mem.read_slice(&mut buf, GuestAddress(pa))) {
        Some(Ok(())) => buf.iter().map(|b| format!("{b:02x}")).collect(),
        _ => "unmapped".into(),
    }
}

fn stack_qwords(fd: &VcpuFd, mem: &GuestMemoryMmap, rsp: u64) -> String {
    (0..STACK_QWORDS)
        .map(|i| {
            rsp.checked_add(i * 8)
                .and_then(|gva| translate(fd, gva))
                .and_then(|pa| mem.read_obj::<u64>(GuestAddress(pa)).ok())
                .map_or_else(|| "?".to_string(), |v| format!("{v:#x}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_is_recognised() {
        let mut s = kvm_sregs::default();
        s.cs.selector = 0xf000;
        s.cs.base = 0xffff_0000;
        s.cr0 = 0x10;
        assert!(is_reset_state(&s));
        s.cr0 = 0x8005_0033;
        assert!(
            !is_reset_state(&s),
            "paging and protection on: a running guest"
        );
    }
}
