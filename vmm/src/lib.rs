//! `husk-vmm`: husk's built-in microVM monitor, a small rust-vmm based VMM that boots the
//! husk guest kernel directly (PVH or 64-bit boot protocol, no firmware) with virtio-mmio
//! devices: hybrid vsock (the `husk-vsock` device, the same one QEMU gets over vhost-user),
//! virtio-fs through virtiofsd (vhost-user frontend), a balloon for free page reporting,
//! optional virtio-net on a tap; plus a
//! 16550 console on stdout, an i8042 for resets and a boot timer.
//!
//! The shim starts it as a process of its own (`husk_hypervisor::builtin` writes the
//! [`VmConfig`] it runs); a separate process keeps a KVM or device bug from taking the shim
//! down, lets the monitor jail itself ([`jail`]) and filter its threads ([`seccomp`]), and
//! makes its memory overhead measurable alone. The same binary jails the other processes a
//! pod runs for its guest: QEMU's hybrid-vsock backend ([`vsock_backend`]) and QEMU itself
//! ([`jail::exec`]).
//!
//! Exit status of `husk-vmm` (what the shim reports): `EXIT_GUEST_STOPPED` when the guest
//! rebooted (the agent reboots to power off; with `reboot=k` Linux resets through the i8042,
//! and `panic=-1` turns a guest panic into the same), `EXIT_SETUP_FAILED` when the VM could
//! not be built, `EXIT_VCPU_FAILED` when KVM failed at run time, `EXIT_GUEST_CRASHED` for a
//! crash event (constants in `husk-vmm-config`).
//!
//! Modules follow the machine: [`arch`] (layout, boot structures, registers), [`kvm`] (VM,
//! memory, vCPUs), [`devices`] (no KVM knowledge), [`device_manager`] (addresses, IRQs,
//! irqfd/ioeventfd wiring, command line), [`builder`] (config → running VM).

pub mod arch;
pub mod builder;
pub mod device_manager;
pub mod devices;
pub mod jail;
pub mod kvm;
pub mod seccomp;
pub mod vsock_backend;

pub use husk_vmm_config::VmConfig;
