//! Kubernetes' path to husk: CRI calls to containerd, RuntimeClass naming the runtime
//! handler `husk` (feature `cri`).
//!
//! - [`world`]: one test's CRI world (private containerd with CRI and CNI, offline images
//!   in `k8s.io`, leak checks covering CRI and CNI leftovers);
//! - [`client`]: a blocking CRI client on the `k8s-cri` crate, a deadline on every call;
//! - [`exec_stream`]: the streaming side of `Exec` (WebSocket, `v4.channel.k8s.io`);
//! - [`port_forward`]: the streaming side of `PortForward` (same protocol, data and error
//!   channels per port);
//! - [`config`], [`cni`], [`specs`]: containerd's CRI config for 1.6 and 2.x, the test's
//!   CNI network, and pod/container configs as kubelet sends them.

pub mod client;
pub mod cni;
pub mod config;
pub mod exec_stream;
pub mod port_forward;
pub mod specs;
pub mod world;

pub use client::{CriClient, CriError, CriResult};
pub use config::HANDLER;
pub use exec_stream::{ExecOutcome, ExecStream};
pub use port_forward::PortForwardStream;
pub use world::{CRI_NAMESPACE, CriWorld};
