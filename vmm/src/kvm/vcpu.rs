//! One vCPU: configuration (CPUID, MSRs, LAPIC, boot registers) and its thread, which runs
//! `KVM_RUN` and dispatches port and MMIO exits to the buses. Any exit that means the machine
//! stops (triple fault, reset or shutdown request, KVM failure) ends the whole VM through the
//! exit signal; the process then exits, which ends every vCPU thread.

use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs,
    kvm_msr_entry,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use slog::{Logger, debug, error, info};

use super::diag::{self, Shutdown};
use super::{KvmError, ioctl};
use crate::arch::regs::{BootRegs, fpu};
use crate::devices::virtio::Memory;
use crate::devices::{Bus, ExitSignal};
use crate::seccomp::{self, ThreadKind};
use husk_vmm_config::{
    EXIT_GUEST_CRASHED, EXIT_GUEST_STOPPED, EXIT_SETUP_FAILED, EXIT_VCPU_FAILED,
};

/// Local APIC register offsets and the delivery-mode field of the LVT entries.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// What a vCPU thread needs.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    /// Guest memory, for the diagnostics of a crash.
    pub mem: Option<Memory>,
    pub log: Logger,
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

impl Vcpu {
    pub fn new(fd: VcpuFd, id: u8) -> Self {
        Self { fd, id }
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; `boot` only for the boot vCPU (the others wait for the
    /// guest's INIT/SIPI in the in-kernel LAPIC).
    pub fn configure(
        &self,
        cpuid: &CpuId,
        msrs: &[kvm_msr_entry],
        boot: Option<&BootRegs>,
    ) -> Result<(), KvmError> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("SET_CPUID2"))?;
        let entries = Msrs::from_entries(msrs).map_err(KvmError::MsrList)?;
        let set = self.fd.set_msrs(&entries).map_err(ioctl("SET_MSRS"))?;
        if set != msrs.len() {
            return Err(KvmError::MsrsRejected {
                set,
                wanted: msrs.len(),
            });
        }
        self.fd.set_fpu(&fpu()).map_err(ioctl("SET_FPU"))?;
        self.set_lint()?;
        if let Some(boot) = boot {
            let mut sregs = self.fd.get_sregs().map_err(ioctl("GET_SREGS"))?;
            let want = &boot.sregs;
            // Keep KVM's reset values for everything the boot protocol does not define.
            sregs.cs = want.cs;
            sregs.ds = want.ds;
            sregs.es = want.es;
            sregs.fs = want.fs;
            sregs.gs = want.gs;
            sregs.ss = want.ss;
            sregs.tr = want.tr;
            sregs.gdt = want.gdt;
            sregs.idt = want.idt;
            sregs.cr0 = want.cr0;
            sregs.cr3 = want.cr3;
            sregs.cr4 = want.cr4;
            sregs.efer = want.efer;
            self.fd.set_sregs(&sregs).map_err(ioctl("SET_SREGS"))?;
            self.fd.set_regs(&boot.regs).map_err(ioctl("SET_REGS"))?;
        }
        Ok(())
    }

    /// LINT0 delivers ExtINT (the PIC), LINT1 NMIs: what a BIOS sets up.
    fn set_lint(&self) -> Result<(), KvmError> {
        let mut lapic = self.fd.get_lapic().map_err(ioctl("GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[reg + i] = b as libc::c_char;
            }
        }
        self.fd.set_lapic(&lapic).map_err(ioctl("SET_LAPIC"))
    }

    /// Starts the vCPU thread. It installs its own syscall filter, then waits at `gate`
    /// until every thread of the monitor is filtered before it enters the guest.
    pub fn spawn(self, ctx: VcpuContext, gate: Arc<Barrier>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run(&ctx, &gate))
    }

    fn run(mut self, ctx: &VcpuContext, gate: &Barrier) {
        let id = self.id;
        let log = ctx.log.new(slog::o!("vcpu" => id));
        if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
            ctx.exit
                .request(EXIT_SETUP_FAILED, format!("vCPU {id}: {e}"));
        }
        gate.wait();
        if ctx.exit.is_requested() {
            return;
        }
        loop {
            match self.fd.run() {
                Ok(VcpuExit::Shutdown) => {
                    let (code, why) = self.shutdown(ctx, &log);
                    ctx.exit.request(code, why);
                    return;
                }
                Ok(exit) => {
                    if let Some((code, why)) = handle_exit(exit, ctx) {
                        if code == EXIT_GUEST_STOPPED {
                            info!(log, "VM stopping"; "reason" => &why);
                        } else {
                            error!(log, "VM failed"; "reason" => &why);
                        }
                        ctx.exit.request(code, why);
                        return;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    let why = format!("KVM_RUN failed on vCPU {id}: {e}");
                    error!(log, "VM failed"; "reason" => &why);
                    ctx.exit.request(EXIT_VCPU_FAILED, why);
                    return;
                }
            }
            if ctx.exit.is_requested() {
                debug!(log, "vCPU stopping");
                return;
            }
        }
    }
}

impl Vcpu {
    /// A shutdown exit: the guest's own reboot, or a crash whose state goes to the log.
    fn shutdown(&self, ctx: &VcpuContext, log: &Logger) -> (i32, String) {
        match diag::shutdown(&self.fd, ctx.mem.as_deref()) {
            Shutdown::Reboot => {
                let why = "guest rebooted (triple fault on an empty IDT: reboot=t)";
                info!(log, "VM stopping"; "reason" => why);
                (EXIT_GUEST_STOPPED, why.into())
            }
            Shutdown::Crash(state) => {
                error!(log, "guest triple-faulted"; "state" => &state);
                (
                    EXIT_GUEST_CRASHED,
                    format!("guest triple-faulted without rebooting: {state}"),
                )
            }
        }
    }
}

/// Serves one exit; `Some((status, reason))` when the VM must stop.
pub fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext) -> Option<(i32, String)> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        VcpuExit::Shutdown => Some((
            EXIT_GUEST_STOPPED,
            "guest reset the machine (triple fault or shutdown)".into(),
        )),
        VcpuExit::Hlt => Some((EXIT_GUEST_STOPPED, "guest halted".into())),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Some((
                EXIT_GUEST_STOPPED,
                format!("guest requested system event {kind}"),
            )),
            KVM_SYSTEM_EVENT_CRASH => Some((EXIT_GUEST_CRASHED, "guest crashed".into())),
            other => Some((EXIT_VCPU_FAILED, format!("unknown system event {other}"))),
        },
        VcpuExit::FailEntry(reason, cpu) => Some((
            EXIT_VCPU_FAILED,
            format!("KVM could not enter the guest (reason {reason:#x}, cpu {cpu})"),
        )),
        VcpuExit::InternalError => Some((
            EXIT_VCPU_FAILED,
            "KVM internal error (emulation failure)".into(),
        )),
        other => Some((EXIT_VCPU_FAILED, format!("unexpected vCPU exit {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::BusDevice;

    struct Latch(Vec<u8>);

    impl BusDevice for Latch {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn ctx() -> (VcpuContext, Arc<Mutex<Latch>>) {
        let latch = Arc::new(Mutex::new(Latch(Vec::new())));
        let mut pio = Bus::new();
        pio.insert(0x3f8, 8, latch.clone()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xd000_0000, 0x1000, latch.clone()).unwrap();
        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit: Arc::new(ExitSignal::new().unwrap()),
            mem: None,
            log: Logger::root(slog::Discard, slog::o!()),
        };
        (ctx, latch)
    }

    #[test]
    fn io_exits_reach_the_buses_and_unclaimed_reads_are_all_ones() {
        let (ctx, latch) = ctx();
        assert!(handle_exit(VcpuExit::IoOut(0x3f8, b"a"), &ctx).is_none());
        assert!(handle_exit(VcpuExit::MmioWrite(0xd000_0010, b"bc"), &ctx).is_none());
        assert_eq!(latch.lock().unwrap().0, b"abc");
        let mut data = [0u8; 2];
        assert!(handle_exit(VcpuExit::IoIn(0x3f9, &mut data), &ctx).is_none());
        assert_eq!(data, [0x42, 0x42]);
        let mut data = [0u8; 4];
        assert!(handle_exit(VcpuExit::MmioRead(0xfee0_0000, &mut data), &ctx).is_none());
        assert_eq!(data, [0xff; 4]);
        assert!(handle_exit(VcpuExit::IoOut(0x80, &[1]), &ctx).is_none());
    }

    #[test]
    fn stop_exits_map_to_statuses() {
        let (ctx, _) = ctx();
        let code = |e| handle_exit(e, &ctx).map(|(c, _)| c);
        assert_eq!(code(VcpuExit::Shutdown), Some(EXIT_GUEST_STOPPED));
        assert_eq!(code(VcpuExit::Hlt), Some(EXIT_GUEST_STOPPED));
        assert_eq!(
            code(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            Some(EXIT_GUEST_STOPPED)
        );
        assert_eq!(
            code(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])),
            Some(EXIT_GUEST_CRASHED)
        );
        assert_eq!(
            code(VcpuExit::FailEntry(0x80000021, 0)),
            Some(EXIT_VCPU_FAILED)
        );
        assert_eq!(code(VcpuExit::InternalError), Some(EXIT_VCPU_FAILED));
        assert_eq!(code(VcpuExit::Unknown), Some(EXIT_VCPU_FAILED));
        assert_eq!(code(VcpuExit::Intr), None);
    }
}
