//! husk-agent: PID 1 of a husk pod VM.
//!
//! The shim boots a guest kernel whose initramfs holds this (static) binary as `/init`. The
//! agent then
//! - prepares the guest ([`init`]): moves its root off the initramfs, mounts the kernel
//!   filesystems and cgroup v2;
//! - reaps every process in the guest ([`reaper`]) and hands exit statuses to whoever waits;
//! - serves the `husk.agent.v1.Agent` ttrpc service on vsock port 1024 ([`service`],
//!   [`server`]);
//! - accepts one vsock connection per stdio stream on port 1025 and pumps bytes between those
//!   connections and the container processes ([`stdio`]);
//! - accepts one vsock connection per forwarded TCP connection on port 1026 and connects it to
//!   a port on the guest's loopback ([`port_forward`], for CRI PortForward);
//! - creates OCI containers with youki's `libcontainer` ([`container`]), doing every forking
//!   operation in a short-lived single-threaded helper process ([`helper`]).

pub mod boot_timer;
pub mod cmdline;
pub mod container;
pub mod exit_status;
pub mod guest_info;
pub mod helper;
pub mod init;
pub mod logging;
pub mod network;
pub mod pause;
pub mod port_forward;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod stdio;
