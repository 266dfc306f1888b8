//! `husk-vsock`: husk's virtio-vsock device with Firecracker's *hybrid vsock* host interface.
//!
//! Host side: the device listens on a Unix socket (`uds_path`). A host client connects, writes
//! `CONNECT <port>\n`, and once the guest accepts gets `OK <local_port>\n` followed by a raw
//! byte stream to guest port `<port>`. Guest connections to host port `P` are forwarded to the
//! Unix socket `<uds_path>_<P>`. If the guest refuses or does not answer in time, the client's
//! socket is closed (clients retry).
//!
//! Layers, each transport independent except the last two:
//! - [`packet`]: wire constants and header copy (descriptor parsing by `virtio-vsock`);
//! - [`credit`], [`host_buffer`]: per-connection flow control and the bounded host-bound buffer;
//! - [`hybrid_socket`]: the listening socket, `CONNECT` handshake, `<uds>_<port>` forwarding;
//! - [`connection`]: one connection's state machine;
//! - [`muxer`]: the connection table, host events, RX scheduling;
//! - [`device`]: virtqueue processing over `virtio-queue` + `vm-memory` (reused by the
//!   built-in VMM's virtio-mmio transport);
//! - [`vhost_user`] + [`server`]: the vhost-user backend QEMU uses, and its threads (run as
//!   a jailed process of its own by `husk-vmm --vsock-backend`, see the `husk-vmm` crate).
//!
//! The guest is hostile: malformed chains, bad addresses, unknown ops or packets for unknown
//! connections are dropped (RST where the spec wants one) and logged at debug level; buffering
//! is bounded by the credit window and at most [`muxer::MAX_CONNECTIONS`] connections exist.
//! Nothing blocks: host sockets are non-blocking and host→guest data is read straight into
//! guest receive buffers only as far as the guest has credit.
//!
//! Writes to host sockets use `write(2)`: the process must ignore `SIGPIPE` (Rust binaries do
//! by default) so a vanished host client is an `EPIPE`, not a signal.

pub mod connection;
pub mod credit;
pub mod device;
pub mod host_buffer;
pub mod hybrid_socket;
pub mod muxer;
pub mod packet;
pub mod poller;
pub mod server;
pub mod vhost_user;

/// Guest-memory rings and packets for tests of this crate and of the monitor's transport.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::VsockDevice;
pub use server::{VhostUserVsock, VhostUserVsockConfig, VsockError};
