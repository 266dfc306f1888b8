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
    /// The pod's own limits, which the guest enforces over all its containers.
    pub limits: PodLimits,
}

/// The pod-level limits of the sandbox annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// CFS quota and period, both in microseconds.
    pub cpu: Option<(u64, u64)>,
    pub memory_bytes: Option<u64>,
}

impl PodSize {
    /// The pod limits as an OCI `linux.resources` object (JSON) for the guest; empty
    /// without limits.
    pub fn guest_resources(&self) -> Vec<u8> {
        let mut resources = serde_json::Map::new();
        if let Some((quota, period)) = self.limits.cpu {
            resources.insert(
                "cpu".into(),
                serde_json::json!({ "quota": quota, "period": period }),
            );
        }
        if let Some(limit) = self.limits.memory_bytes {
            resources.insert("memory".into(), serde_json::json!({ "limit": limit }));
        }
        if resources.is_empty() {
            return Vec::new();
        }
        serde_json::Value::Object(resources)
            .to_string()
            .into_bytes()
    }
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
    let cpu_limit = match (number(CPU_QUOTA_ANNOTATION), number(CPU_PERIOD_ANNOTATION)) {
        (Some(quota), Some(period)) => Some((quota, period)),
        _ => None,
    };
    // Ceiling: a pod limited to 1.5 CPUs needs 2 vCPUs to use them.
    let cpus =
        cpu_limit.map(|(quota, period)| u32::try_from(quota.div_ceil(period)).unwrap_or(u32::MAX));
    let memory_bytes = number(MEMORY_ANNOTATION);
    let memory = memory_bytes.map(|bytes| u32::try_from(bytes.div_ceil(MIB)).unwrap_or(u32::MAX));
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
        limits: PodLimits {
            cpu: cpu_limit,
            memory_bytes,
        },
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
        // The guest holds the pod to its limits, not to the VM's size.
        let resources: serde_json::Value = serde_json::from_slice(&s.guest_resources()).unwrap();
        assert_eq!(
            resources,
            serde_json::json!({
                "cpu": { "quota": 150000, "period": 100000 },
                "memory": { "limit": 536870912 }
            })
        );
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
        let s = pod_size(&a, &config(), 8);
        assert_eq!(s.source, "defaults");
        assert!(s.guest_resources().is_empty());
    }
}
