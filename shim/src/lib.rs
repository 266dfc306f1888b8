//! `containerd-shim-husk-v2`: containerd's shim for husk pods. One shim process and one VM
//! per pod; the task API is served to containerd and carried out by the agent in the VM.

pub mod agent;
pub mod args;
pub mod beneath;
pub mod bind_source;
pub mod check;
pub mod cleanup;
pub mod config;
pub mod container_files;
pub mod events;
pub mod guest_spec;
pub mod ids;
pub mod isolation;
pub mod logger;
pub mod mounts;
pub mod network;
pub mod pod;
pub mod pod_cgroup;
pub mod pod_dir;
pub mod pod_launch;
mod pod_volumes;
pub mod runtime_options;
pub mod sandbox;
pub mod serve;
pub mod sizing;
pub mod start;
pub mod start_phases;
pub mod stdio;
pub mod task;
pub mod volume_watch;
