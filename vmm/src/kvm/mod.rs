//! The KVM side of the monitor: the VM (in-kernel IOAPIC/PIC/LAPIC and PIT, memory slots,
//! irqfds and ioeventfds), guest memory, and the vCPUs with their CPUID, MSRs and run loops.
//! `unsafe` lives only where memory is handed to KVM.

pub mod cpuid;
pub mod diag;
pub mod memory;
pub mod msr;
pub mod vcpu;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::arch::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use super::device_manager::IrqWiring;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {what}: {source}")]
    Memory {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("guest memory: {0} bytes do not fit in this host's address space")]
    GuestTooLarge(u64),
    #[error("building the boot MSR list: {0}")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM accepted {set} of {wanted} boot MSRs")]
    MsrsRejected { set: usize, wanted: usize },
    #[error("host lacks KVM capability {0}")]
    MissingCapability(&'static str),
}

pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Creates the VM with the in-kernel interrupt controllers and PIT.
    pub fn new() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        for (cap, name) in [
            (kvm_ioctls::Cap::Irqchip, "IRQCHIP"),
            (kvm_ioctls::Cap::Ioeventfd, "IOEVENTFD"),
            (kvm_ioctls::Cap::Irqfd, "IRQFD"),
            (kvm_ioctls::Cap::UserMemory, "USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(ioctl("CREATE_VM"))?;
        let tss = usize::try_from(KVM_TSS_ADDR)
            .map_err(|_| KvmError::MissingCapability("64-bit host"))?;
        fd.set_tss_address(tss).map_err(ioctl("SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(ioctl("SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))?;
        Ok(Self { kvm, fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("GET_SUPPORTED_CPUID"))
    }

    pub fn msr_index_list(&self) -> Result<Vec<u32>, KvmError> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(ioctl("GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, KvmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("CREATE_VCPU"))
    }
}

impl IrqWiring for Vm {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn register_ioevent(
        &self,
        evt: &EventFd,
        mmio_addr: u64,
        datamatch: u32,
    ) -> std::io::Result<()> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(mmio_addr), datamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
