//! The shim <-> agent contract: the ttrpc `Agent` service (generated from `proto/agent.proto`),
//! the vsock ports, the guest paths both sides agree on, and the header that opens a stdio
//! stream on the IO port.

pub mod io_stream;

/// Generated protobuf messages and ttrpc service/client for `husk.agent.v1.Agent`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#[allow(warnings, unused_qualifications)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent/agent.rs"));
}

/// Generated async ttrpc client and server glue.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#[allow(warnings, unused_qualifications)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent/agent_ttrpc.rs"));
}

pub use protobuf;
pub use ttrpc;

/// vsock port of the agent's ttrpc server (Kata's port).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// vsock port on which the agent accepts one connection per stdio stream.
pub const IO_VSOCK_PORT: u32 = 1025;
/// Guest mount point of the per-pod virtio-fs share; a container's files live in
/// `<SHARED_DIR_GUEST>/<container id>/`.
pub const SHARED_DIR_GUEST: &str = "/run/husk/shared";
/// Name of a container's rootfs directory inside its shared directory.
pub const ROOTFS_DIR: &str = "rootfs";
/// Kernel command-line key that sets the agent's log level (e.g. `husk.log=debug`).
pub const LOG_LEVEL_CMDLINE_KEY: &str = "husk.log";
