//! The shim <-> agent contract: the ttrpc `Agent` service (generated from `proto/agent.proto`),
//! the vsock ports, the guest paths both sides agree on, and the header that opens a stdio
//! stream on the IO port. Also the one containerd message the shim decodes that no crate
//! carries: [`runtimeoptions`], CRI's runtime options, and [`cri_sandbox`], CRI's pod config.

pub mod guest_text;
pub mod io_stream;
pub mod port_forward;

/// A module of code generated into OUT_DIR, exempt from the lints hand-written code keeps.
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic
        )]
        #[allow(warnings, unused_qualifications)]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), $file));
        }
    };
}

generated!(
    /// Generated protobuf messages and ttrpc service/client for `husk.agent.v1.Agent`.
    agent,
    "/agent/agent.rs"
);
generated!(
    /// Generated async ttrpc client and server glue.
    agent_ttrpc,
    "/agent/agent_ttrpc.rs"
);
generated!(
    /// containerd's `runtimeoptions.v1.Options` (generated from `proto/runtimeoptions.proto`).
    runtimeoptions,
    "/agent/runtimeoptions.rs"
);
generated!(
    /// The part of CRI's `runtime.v1.PodSandboxConfig` the shim reads (generated from
    /// `proto/cri_sandbox.proto`): containerd 2.x's Sandbox API passes it to CreateSandbox.
    cri_sandbox,
    "/agent/cri_sandbox.rs"
);

pub use protobuf;
pub use ttrpc;

/// vsock port of the agent's ttrpc server (Kata's port).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// vsock port on which the agent accepts one connection per stdio stream.
pub const IO_VSOCK_PORT: u32 = 1025;
/// vsock port on which the agent accepts one connection per forwarded TCP connection
/// (CRI PortForward): [`port_forward`].
pub const FORWARD_VSOCK_PORT: u32 = 1026;
/// Guest mount point of the per-pod virtio-fs share; a container's files live in
/// `<SHARED_DIR_GUEST>/<container id>/`.
pub const SHARED_DIR_GUEST: &str = "/run/husk/shared";
/// How long the agent holds a WaitOomKills call without news.
pub const OOM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The agent's binary in the guest (the VM's init).
pub const GUEST_AGENT_PATH: &str = "/init";
/// The argument that makes the agent's binary a pod's pause process (Sandbox API pods, which
/// have no pause image).
pub const PAUSE_ARG: &str = "--husk-pause";
/// The symlink kubelet's atomic writer swaps in configMap, secret, downwardAPI and
/// projected volumes. A read-only directory volume with it on top is watched by the shim
/// and kept by the agent as a guest copy (`SyncVolume`).
pub const ATOMIC_DATA_LINK: &str = "..data";

/// True if `dir` is an atomically updated volume: it has an [`ATOMIC_DATA_LINK`] symlink.
pub fn is_atomic_volume(dir: &std::path::Path) -> bool {
    std::fs::symlink_metadata(dir.join(ATOMIC_DATA_LINK)).is_ok_and(|m| m.file_type().is_symlink())
}

/// Name of a container's rootfs directory inside its shared directory.
pub const ROOTFS_DIR: &str = "rootfs";
/// Kernel command-line key that sets the agent's log level (e.g. `husk.log=debug`).
pub const LOG_LEVEL_CMDLINE_KEY: &str = "husk.log";
/// Kernel command-line key naming the physical address of the monitor's boot-timer page
/// (e.g. `husk.boot_timer=0xd0000000`). Only monitors that have the device pass it; the
/// agent then writes [`BOOT_TIMER_MAGIC`] there once it serves, and the monitor logs the time
/// since the VM was created.
pub const BOOT_TIMER_CMDLINE_KEY: &str = "husk.boot_timer";
/// The byte that means "the agent is ready".
pub const BOOT_TIMER_MAGIC: u8 = 123;
