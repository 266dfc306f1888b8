//! Validated [`VmConfig`] → a configured machine ([`Machine`]) → running until it stops.
//!
//! Order matters: the VM and its in-kernel irqchip exist before devices register irqfds and
//! before vCPUs are created; guest memory is registered before the kernel is loaded; the
//! command line is complete (virtio entries included) before it is written.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use slog::{Logger, info, warn};
use vmm_sys_util::epoll::EventSet;

use crate::arch::loader::BootSetup;
use crate::arch::{self, ArchError, regs::boot_regs};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::fs::VirtioFs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::tap::Tap;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Memory, VirtioError};
use crate::devices::{ExitReason, ExitSignal};
use crate::kvm::vcpu::{Vcpu, VcpuContext};
use crate::kvm::{KvmError, Vm, cpuid, memory, msr};
use crate::seccomp::{self, SeccompError, ThreadKind};
use husk_vmm_config::{ConfigError, EXIT_SETUP_FAILED, EXIT_VCPU_FAILED, LaunchFile, VmConfig};
use husk_vsock::VsockDevice;
use husk_vsock::device::DeviceError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("vsock device: {0}")]
    Vsock(#[from] DeviceError),
    #[error("virtio device: {0}")]
    Virtio(#[from] VirtioError),
    #[error("tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("KVM supports {max} vCPUs, {want} requested")]
    TooManyVcpus { max: usize, want: u8 },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// A VM ready to run.
pub struct Machine {
    /// Kept alive for the VM's life (memory slots point into it).
    _mem: Memory,
    _vm: Vm,
    vcpus: Vec<Vcpu>,
    ctx: VcpuContext,
    devices: DeviceManager,
    created: Instant,
    log: Logger,
}

/// Builds the VM described by `config`; the serial console writes to `serial_out`.
pub fn build<W: Write + Send + 'static>(
    config: &VmConfig,
    serial_out: W,
    log: &Logger,
) -> Result<Machine, BuildError> {
    config.validate()?;
    let vm = Vm::new()?;
    let created = Instant::now();
    if usize::from(config.vcpus) > vm.max_vcpus() {
        return Err(BuildError::TooManyVcpus {
            max: vm.max_vcpus(),
            want: config.vcpus,
        });
    }
    let mem: Memory = Arc::new(memory::create_guest_memory(config.memory_bytes())?);
    memory::register(&vm, &mem)?;
    let exit = Arc::new(ExitSignal::new()?);
    let mut devices = DeviceManager::new()?;
    devices.add_legacy_devices(&vm, exit.clone(), serial_out, created, log)?;
    add_virtio_devices(&mut devices, &vm, config, &mem, log)?;
    let mut cmdline = Cmdline::new(arch::CMDLINE_MAX_LEN).map_err(ArchError::from)?;
    cmdline
        .insert_str(config.cmdline.trim())
        .and_then(|()| devices.announce(&mut cmdline))
        .map_err(ArchError::from)?;
    let setup = arch::loader::load(
        mem.as_ref(),
        config.memory_bytes(),
        config.vcpus,
        &config.kernel,
        config.initrd.as_deref(),
        &cmdline,
    )?;
    info!(log, "guest loaded"; "entry" => format!("{:?}", setup.protocol),
          "kernel_end" => format!("{:#x}", setup.kernel_end));
    let vcpus = create_vcpus(&vm, config.vcpus, &setup)?;
    let ctx = VcpuContext {
        pio: Arc::new(devices.pio_bus.clone()),
        mmio: Arc::new(devices.mmio_bus.clone()),
        exit,
        mem: Some(mem.clone()),
        log: log.clone(),
    };
    Ok(Machine {
        _mem: mem,
        _vm: vm,
        vcpus,
        ctx,
        devices,
        created,
        log: log.clone(),
    })
}

/// The virtio devices `config` asks for: vsock, virtio-fs, the reporting balloon, one
/// virtio-net per tap.
fn add_virtio_devices(
    devices: &mut DeviceManager,
    vm: &Vm,
    config: &VmConfig,
    mem: &Memory,
    log: &Logger,
) -> Result<(), BuildError> {
    if let Some(v) = &config.vsock {
        let dlog = log.new(slog::o!("device" => "vsock"));
        let device = VsockDevice::new(v.guest_cid, &v.uds_path, dlog.clone())?;
        devices.add_virtio_device(
            vm,
            Box::new(Vsock::new(device, dlog.clone())),
            mem.clone(),
            &dlog,
        )?;
    }
    if let Some(fs) = &config.fs {
        let dlog = log.new(slog::o!("device" => "virtio-fs"));
        let device = VirtioFs::connect(&fs.socket, &fs.tag, dlog.clone())?;
        devices.add_virtio_device(vm, Box::new(device), mem.clone(), &dlog)?;
    }
    // Free page reporting: what the guest frees goes back to the host (see `balloon`).
    let dlog = log.new(slog::o!("device" => "balloon"));
    devices.add_virtio_device(vm, Box::new(Balloon::new(dlog.clone())), mem.clone(), &dlog)?;
    for n in &config.net {
        let dlog = log.new(slog::o!("device" => "net", "interface" => n.name.clone()));
        let tap = Tap::from_inherited(n.fd).map_err(|source| BuildError::Tap {
            name: n.name.clone(),
            source,
        })?;
        devices.add_virtio_device(
            vm,
            Box::new(Net::new(tap, n.mac, dlog.clone())),
            mem.clone(),
            &dlog,
        )?;
    }
    Ok(())
}

/// `count` vCPUs with their CPUID and boot MSRs; the first one gets the boot registers.
fn create_vcpus(vm: &Vm, count: u8, setup: &BootSetup) -> Result<Vec<Vcpu>, BuildError> {
    let supported = vm.supported_cpuid()?;
    let msrs = msr::boot_msrs(&vm.msr_index_list()?);
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let vcpu = Vcpu::new(vm.create_vcpu(id)?, id);
        let boot = (id == 0).then(|| boot_regs(setup.protocol, Default::default()));
        vcpu.configure(
            &cpuid::for_vcpu(&supported, id, count),
            &msrs,
            boot.as_ref(),
        )?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Wakes the event loop when the VM must stop.
struct ExitWatch(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.0.event_fd().as_raw_fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event_fd().read();
    }
}

impl Machine {
    /// Runs the VM until it stops; returns why. The machine is not dropped afterwards:
    /// its devices stay as they are until the process exits (the filter allows no
    /// `unlink` of their sockets; the shim removes them).
    pub fn run(&mut self) -> Result<ExitReason, BuildError> {
        let mut em = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()
            .map_err(BuildError::EventLoop)?;
        em.add_subscriber(Box::new(ExitWatch(self.ctx.exit.clone())));
        for handler in self.devices.take_handlers() {
            em.add_subscriber(Box::new(handler));
        }
        // Each vCPU thread filters itself, then waits here until this thread is filtered
        // too: no guest code runs while any thread of the monitor is unfiltered.
        let gate = Arc::new(Barrier::new(self.vcpus.len() + 1));
        for vcpu in std::mem::take(&mut self.vcpus) {
            // Threads are detached: the process exit ends them (on an error here too, while
            // the ones started wait at the gate).
            vcpu.spawn(self.ctx.clone(), gate.clone())?;
        }
        let filtered = seccomp::install(ThreadKind::Device);
        if let Err(e) = &filtered {
            // Keeps the vCPUs out of the guest once they pass the gate.
            self.ctx.exit.request(EXIT_SETUP_FAILED, e.to_string());
        }
        gate.wait();
        let syscalls = filtered?;
        info!(self.log, "syscall filters installed"; "device_thread_syscalls" => syscalls);
        let setup = self.created.elapsed();
        info!(self.log, "VM running"; "setup_ms" => u64::try_from(setup.as_millis()).unwrap_or(u64::MAX));
        while !self.ctx.exit.is_requested() {
            if let Err(e) = em.run() {
                warn!(self.log, "event loop error"; "error" => ?e);
                self.ctx
                    .exit
                    .request(EXIT_VCPU_FAILED, format!("event loop failed: {e:?}"));
            }
        }
        Ok(self.ctx.exit.reason().unwrap_or(ExitReason {
            code: EXIT_VCPU_FAILED,
            description: "VM stopped without a reason".into(),
        }))
    }
}
