//! Virtual machine monitors for husk pods.
//!
//! A [`Vmm`] backend launches a VM from a [`VmSpec`] and hands back a [`VmHandle`]. Every
//! backend gives the guest the same two channels: a hybrid-vsock device (host side: a Unix
//! socket speaking Firecracker's `CONNECT <port>` protocol, see [`hybrid_client`]) and a
//! virtio-fs share served by `virtiofsd`. [`probe`] decides which backend a host can run.

pub mod builtin;
mod child;
pub mod fd_passing;
pub mod hybrid_client;
pub mod jail;
pub mod probe;
pub mod qemu;
pub mod select;
pub mod spec;
pub mod virtiofsd;
mod vm_processes;
pub mod vmm;
pub mod vmm_ids;
pub mod vsock;

pub use probe::{HostProbe, KvmSupport};
pub use select::{
    ALLOW_EMULATION_KEY, BackendChoice, Selection, SoftwareEmulation, TCG_IS_NOT_A_BOUNDARY,
    select, select_with,
};
pub use spec::{SharedFsSpec, VmSpec, VsockSpec};
pub use vmm::{VmExit, VmHandle, Vmm, VmmError};
pub use vmm_ids::IdRange;
