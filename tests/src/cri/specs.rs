//! Pod and container configs as kubelet sends them, for the offline images.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};

use crate::image::IMAGE_REF;

/// The Kubernetes namespace the test pods claim to be in.
pub const POD_NAMESPACE: &str = "husk-test";

/// A pod named `name` (also its hostname, as kubelet does) logging under `log_dir`, with
/// kubelet's defaults: pod network and IPC namespaces, a PID namespace per container.
pub fn pod_config(name: &str, uid: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: POD_NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: HashMap::from([("husk-test".into(), name.into())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(NamespaceMode::Pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Namespace options with the given network mode (IPC shared by the pod, PID per
/// container, as kubelet's defaults).
pub fn namespaces(network: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pod-level resources kubelet sums from its containers' limits (containerd turns them
/// into the `io.kubernetes.cri.sandbox-*` annotations).
pub fn with_resources(
    mut pod: PodSandboxConfig,
    quota: i64,
    period: i64,
    memory: i64,
) -> PodSandboxConfig {
    let linux = pod.linux.get_or_insert_with(Default::default);
    linux.resources = Some(LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        memory_limit_in_bytes: memory,
        ..Default::default()
    });
    pod
}

/// What kubelet masks in every container that is not privileged (its default `procMount`;
/// containerd relies on kubelet sending them).
pub const KUBELET_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// What kubelet makes read-only likewise.
pub const KUBELET_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A busybox container `name` running `args` (as `command`), logging to `<name>.log` in
/// the pod's log directory. Like kubelet, it repeats the pod's namespace options (an
/// unset PID mode would mean POD: one PID namespace for the whole pod) and sends its
/// default masked and read-only paths.
pub fn container_config(name: &str, args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE_REF.into(),
            ..Default::default()
        }),
        command: args.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("husk-test".into(), name.into())]),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(NamespaceMode::Pod)),
                masked_paths: KUBELET_MASKED_PATHS.map(str::to_owned).to_vec(),
                readonly_paths: KUBELET_READONLY_PATHS.map(str::to_owned).to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod-wide PID namespace (shareProcessNamespace) for the pod `pod` and its container
/// `container`: the container sees the pod's pause process as PID 1. False if either has no
/// namespace options to change.
pub fn share_pod_pids(pod: &mut PodSandboxConfig, container: &mut ContainerConfig) -> bool {
    let pod_ns = pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut());
    let container_ns = container
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut());
    match (pod_ns, container_ns) {
        (Some(p), Some(c)) => {
            p.pid = NamespaceMode::Pod as i32;
            c.pid = NamespaceMode::Pod as i32;
            true
        }
        _ => false,
    }
}
