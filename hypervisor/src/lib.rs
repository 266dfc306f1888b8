//! `husk-hypervisor`: the shim's side of a pod's virtual machine.
//!
//! A [`Vmm`] backend launches a VM from a [`VmSpec`] and hands back a [`VmHandle`]. Every
//! backend gives the guest the same two channels: a hybrid-vsock device (host side: a Unix
//! socket speaking Firecracker's `CONNECT <port>` protocol, see [`hybrid_client`]) and a
//! virtio-fs share served by `virtiofsd`. [`probe`] decides which backend a host can run,
//! [`select`] picks it.
//!
//! The backends are launchers: [`builtin`] runs husk's own monitor (the `husk-vmm` crate,
//! a process of its own), [`qemu`] runs QEMU in husk-vmm's jail with husk-vmm's vsock
//! backend beside it. What they hand `husk-vmm` is the plain data of `husk-vmm-config`; this
//! crate links no KVM, loader or device code. [`child`] supervises every process a pod
//! starts (they die with the shim), [`vmm_ids`] gives each its own uid.

pub mod binaries;
pub mod builtin;
mod child;
pub mod fd_passing;
pub mod hybrid_client;
pub mod probe;
pub mod qemu;
pub mod select;
pub mod spec;
pub mod virtiofsd;
mod vm_processes;
pub mod vmm;
pub mod vmm_ids;

pub use probe::{HostProbe, KvmSupport};
pub use select::{
    ALLOW_EMULATION_KEY, BackendChoice, Selection, SoftwareEmulation, TCG_IS_NOT_A_BOUNDARY,
    select, select_with,
};
pub use spec::{NetSpec, SharedFsSpec, VmSpec, VsockSpec};
pub use vmm::{LaunchTimes, VmExit, VmHandle, Vmm, VmmError};
pub use vmm_ids::IdRange;
