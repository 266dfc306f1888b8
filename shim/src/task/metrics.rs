//! containerd's `io.containerd.cgroups.v2.Metrics` from the figures the agent reports.
//!
//! The figures are guest data: bounded in number before anything is built from them, and
//! only known names are read, so a hostile guest can lie about its own usage but cannot
//! make the shim do unbounded work.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use husk_protocol::agent::ContainerStatsResponse;

use super::error::{TaskError, TaskResult};

/// The type containerd's CRI decodes a v2 Metrics payload as (what the runc shim sends).
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";
/// More names than a guest kernel's cgroup files hold (about 120 in Linux 6.1).
pub const MAX_COUNTERS: usize = 512;
/// Block devices reported in io.stat.
pub const MAX_IO_DEVICES: usize = 64;

/// Sets each named field from the counter `<prefix><field>`.
macro_rules! fill {
    ($target:expr, $get:expr, $prefix:literal, [$($field:ident),* $(,)?]) => {
        $( $target.$field = $get(concat!($prefix, stringify!($field))); )*
    };
}

/// The guest's figures as containerd's cgroup v2 metrics.
pub fn cgroup_v2_metrics(figures: &ContainerStatsResponse) -> TaskResult<Metrics> {
    if figures.counters.len() > MAX_COUNTERS || figures.io.len() > MAX_IO_DEVICES {
        return Err(TaskError::Internal(format!(
            "the guest reported {} figures and {} block devices (at most {MAX_COUNTERS} and \
             {MAX_IO_DEVICES}): a broken or hostile guest",
            figures.counters.len(),
            figures.io.len()
        )));
    }
    let get = |name: &str| figures.counters.get(name).copied().unwrap_or(0);

    let mut cpu = CPUStat::new();
    fill!(
        cpu,
        get,
        "cpu.stat:",
        [
            usage_usec,
            user_usec,
            system_usec,
            nr_periods,
            nr_throttled,
            throttled_usec,
            nr_bursts,
            burst_usec,
        ]
    );

    let mut memory = MemoryStat::new();
    fill!(
        memory,
        get,
        "memory.stat:",
        [
            anon,
            file,
            kernel_stack,
            slab,
            sock,
            shmem,
            file_mapped,
            file_dirty,
            file_writeback,
            anon_thp,
            inactive_anon,
            active_anon,
            inactive_file,
            active_file,
            unevictable,
            slab_reclaimable,
            slab_unreclaimable,
            pgfault,
            pgmajfault,
            workingset_nodereclaim,
            pgrefill,
            pgscan,
            pgsteal,
            pgactivate,
            pgdeactivate,
            pglazyfree,
            pglazyfreed,
            thp_fault_alloc,
            thp_collapse_alloc,
        ]
    );
    // Linux 5.9+ splits these by anon/file; containerd reports the plain name.
    let either = |plain: &str| {
        figures.counters.get(plain).copied().unwrap_or_else(|| {
            get(&format!("{plain}_anon")).saturating_add(get(&format!("{plain}_file")))
        })
    };
    memory.workingset_refault = either("memory.stat:workingset_refault");
    memory.workingset_activate = either("memory.stat:workingset_activate");
    memory.usage = get("memory.current");
    memory.usage_limit = get("memory.max");
    memory.max_usage = get("memory.peak");
    memory.swap_usage = get("memory.swap.current");
    memory.swap_limit = get("memory.swap.max");

    let mut events = MemoryEvents::new();
    fill!(
        events,
        get,
        "memory.events:",
        [low, high, max, oom, oom_kill, oom_group_kill]
    );

    let mut pids = PidsStat::new();
    pids.current = get("pids.current");
    pids.limit = get("pids.max");

    let mut io = IOStat::new();
    io.usage = figures
        .io
        .iter()
        .map(|d| {
            let mut e = IOEntry::new();
            (e.major, e.minor) = (d.major, d.minor);
            (e.rbytes, e.wbytes, e.rios, e.wios) = (d.rbytes, d.wbytes, d.rios, d.wios);
            e
        })
        .collect();

    let mut metrics = Metrics::new();
    metrics.cpu = Some(cpu).into();
    metrics.memory = Some(memory).into();
    metrics.memory_events = Some(events).into();
    metrics.pids = Some(pids).into();
    metrics.io = Some(io).into();
    Ok(metrics)
}

/// `metrics` packed the way containerd unpacks task metrics.
pub fn to_any(metrics: &Metrics) -> TaskResult<Any> {
    let mut any = Any::new();
    any.type_url = METRICS_TYPE_URL.to_owned();
    any.value = metrics
        .write_to_bytes()
        .map_err(|e| TaskError::internal("encoding the cgroup metrics", e))?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use husk_protocol::agent::IoDeviceStats;

    use super::*;

    fn figures(pairs: &[(&str, u64)]) -> ContainerStatsResponse {
        let mut f = ContainerStatsResponse::new();
        f.counters = pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        f
    }

    #[test]
    fn maps_the_guest_figures_by_name() {
        let mut f = figures(&[
            ("cpu.stat:usage_usec", 1_500_000),
            ("memory.current", 64 << 20),
            ("memory.max", u64::MAX),
            ("memory.stat:inactive_file", 4096),
            ("memory.stat:workingset_refault_anon", 2),
            ("memory.stat:workingset_refault_file", 3),
            ("memory.events:oom_kill", 1),
            ("pids.current", 7),
            ("no.such:figure", 9),
        ]);
        let mut disk = IoDeviceStats::new();
        (disk.major, disk.wbytes) = (254, 512);
        f.io.push(disk);
        let m = cgroup_v2_metrics(&f).unwrap();
        assert_eq!(m.cpu.usage_usec, 1_500_000);
        assert_eq!(m.memory.usage, 64 << 20);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.inactive_file, 4096);
        assert_eq!(m.memory.workingset_refault, 5);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 7);
        assert_eq!(m.io.usage[0].major, 254);
        assert_eq!(m.io.usage[0].wbytes, 512);

        let any = to_any(&m).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }

    #[test]
    fn a_flood_of_figures_is_refused() {
        let many: Vec<(String, u64)> = (0..=MAX_COUNTERS).map(|i| (format!("x{i}"), 1)).collect();
        let mut f = ContainerStatsResponse::new();
        f.counters = many.into_iter().collect();
        let err = cgroup_v2_metrics(&f).unwrap_err();
        assert!(err.to_string().contains("hostile"), "{err}");
        let mut f = ContainerStatsResponse::new();
        f.io = vec![IoDeviceStats::new(); MAX_IO_DEVICES + 1];
        assert!(cgroup_v2_metrics(&f).is_err());
    }
}
