//! husk's integration-test harness.
//!
//! Each test gets a [`TestBed`]: a private containerd (own root, state, socket and
//! config in a per-test directory), the offline busybox image imported into namespace
//! `husk-test`, a [`Ctr`] with deadlines, and a leak checker that attributes processes,
//! mounts and runtime files to the test even when two tests run at once (see
//! [`leaks`]). The husk tests need the build artifacts: `cargo xtask test` builds them
//! and passes their directory as `HUSK_ARTIFACTS`.
//!
//! Tests run the machine's containerd (1.6 on Debian 12) or, with
//! [`ContainerdFlavour::V2`], containerd 2.x fetched by `cargo xtask deps` (found through
//! `HUSK_CONTAINERD2` or the husk cache, see [`containerd::containerd2_dir`]).
//!
//! The helpers ([`cmd::Cmd`], [`Containerd`], [`BusyboxImage`], [`HuskConfig`]) are
//! also what `cargo xtask` uses for `demo` and `build`.

pub mod artifacts;
/// kubelet's atomic writer for configMap-style volumes.
pub mod atomic_writer;
pub mod cmd;
pub mod containerd;
#[cfg(feature = "cri")]
pub mod cri;
pub mod ctr;
pub mod faults;
pub mod husk_config;
pub mod image;
pub mod kernel_release;
pub mod leaks;
pub mod mounts;
pub mod namespace_cgroups;
pub mod nested;
/// Network benchmark figures and their table rows.
pub mod net_figures;
/// Network measurements shared by the benchmark drivers (TCP push, ping summary).
#[cfg(any(feature = "cri", feature = "nested-pod"))]
pub mod netperf;
/// A plain network namespace on a bridge: a host that is no pod.
#[cfg(any(feature = "cri", feature = "nested-pod"))]
pub mod plain_ns;
pub mod procfs;
pub mod scope;
pub mod testbed;

pub use artifacts::{ARTIFACTS_ENV, Artifacts, HUSK_RUNTIME, RUNC_RUNTIME, SHIM_BINARY};
pub use cmd::{Cmd, CmdError, Output};
pub use containerd::{Containerd, ContainerdFlavour, ContainerdOptions};
pub use ctr::Ctr;
pub use husk_config::{Backend, HuskConfig};
pub use image::{BusyboxImage, IMAGE_REF};
pub use leaks::{LeakReport, LeakScope};
#[cfg(any(feature = "cri", feature = "nested-pod"))]
pub use plain_ns::PlainNs;
pub use scope::TestScope;
pub use testbed::{Runtime, TEST_NAMESPACE, TestBed, TestBedError};
