//! Pod VM size from CRI's sandbox-sizing annotations.
//!
//! containerd's CRI plugin annotates the sandbox container with the pod's summed container
//! limits (kubelet sends them in `LinuxPodSandboxConfig.resources`). The VM gets those plus
//! a fixed overhead for the guest kernel and agent. Without limits (a best-effort pod, or
//! `ctr run`), the configured default size applies.

use std::collections::HashMap;

use husk_hypervisor::spec::{MAX_VCPUS, MIN_MEMORY_MIB};

use crate::config::HypervisorConfig;

pub const CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1024 * 1024;

/// vCPUs and memory of a pod VM, and where they came from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSize {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub source: &'static str,
}

/// Sizes the VM: limits + overhead when the pod has limits, else the configured defaults.
/// `host_cpus` caps the vCPU count (more vCPUs than host CPUs only adds contention).
pub fn pod_size(
    annotations: &HashMap<String, String>,
    config: &HypervisorConfig,
    host_cpus: u32,
) -> PodSize {
    let number = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v > 0)
    };
    let cpus = match (number(CPU_QUOTA_ANNOTATION), number(CPU_PERIOD_ANNOTATION)) {
        // Ceiling: a pod limited to 1.5 CPUs needs 2 vCPUs to use them.
        (Some(quota), Some(period)) => {
            Some(u32::try_from(quota.div_ceil(period)).unwrap_or(u32::MAX))
        }
        _ => None,
    };
    let memory = number(MEMORY_ANNOTATION)
        .map(|bytes| u32::try_from(bytes.div_ceil(MIB)).unwrap_or(u32::MAX));
    let cap_cpus = |v: u32| v.clamp(1, host_cpus.clamp(1, MAX_VCPUS));
    let source = if cpus.is_some() || memory.is_some() {
        "pod limits + overhead"
    } else {
        "defaults"
    };
    PodSize {
        vcpus: cap_cpus(cpus.map_or(config.vcpus, |c| c.saturating_add(config.overhead_vcpus))),
        memory_mib: memory
            .map_or(config.memory_mib, |m| {
                m.saturating_add(config.overhead_memory_mib)
            })
            .max(MIN_MEMORY_MIB),
        source,
    }
}

/// CPUs this host can give a VM.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            vcpus: 1,
            memory_mib: 256,
            overhead_vcpus: 1,
            overhead_memory_mib: 128,
            ..HypervisorConfig::default()
        }
    }

    #[test]
    fn defaults_without_limits() {
        let s = pod_size(&ann(&[]), &config(), 8);
        assert_eq!((s.vcpus, s.memory_mib, s.source), (1, 256, "defaults"));
    }

    #[test]
    fn limits_plus_overhead() {
        let a = ann(&[
            (CPU_PERIOD_ANNOTATION, "100000"),
            (CPU_QUOTA_ANNOTATION, "150000"),
            (MEMORY_ANNOTATION, "536870912"),
        ]);
        let s = pod_size(&a, &config(), 8);
        assert_eq!((s.vcpus, s.memory_mib), (3, 512 + 128));
    }

    #[test]
    fn vcpus_are_capped_by_the_host_and_memory_has_a_floor() {
        let a = ann(&[
            (CPU_PERIOD_ANNOTATION, "100000"),
            (CPU_QUOTA_ANNOTATION, "6400000"),
            (MEMORY_ANNOTATION, "1"),
        ]);
        let mut c = config();
        c.overhead_memory_mib = 0;
        let s = pod_size(&a, &c, 2);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.memory_mib, MIN_MEMORY_MIB);
    }

    #[test]
    fn garbage_and_unlimited_values_are_ignored() {
        // CRI writes quota -1 / memory 0 for "no limit".
        let a = ann(&[
            (CPU_PERIOD_ANNOTATION, "100000"),
            (CPU_QUOTA_ANNOTATION, "-1"),
            (MEMORY_ANNOTATION, "lots"),
        ]);
        assert_eq!(pod_size(&a, &config(), 8).source, "defaults");
    }
}
