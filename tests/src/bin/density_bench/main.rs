//! `density_bench`: how many idle husk pods this host holds and what they cost, and how
//! pods started together fare, through CRI (containerd 2.x, husk's Sandbox API, the test's
//! bridge CNI network). `cargo xtask bench` runs it with `HUSK_ARTIFACTS` set and puts the
//! Markdown section it prints on stdout in BENCHMARKS.md.
//!
//! 1. One pod (a busybox `sleep` container) started alone: the reference start time.
//! 2. [`CONCURRENT`] pods started at once, each on its own thread: until all run.
//! 3. Idle pods started one after another until [`MAX_PODS`] or until the host's
//!    `MemAvailable` drops below [`MEMORY_RESERVE_MIB`]; then the PSS of every husk process
//!    (shims, VMMs, helpers) and their CPU use over [`CPU_WINDOW`].
//!
//! Every pod is removed again; the world's leak check runs at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use husk_tests::nested::smaps::pss_of;
use husk_tests::procfs::{USER_HZ, cpu_ticks, snapshot};
use k8s_cri::v1::ContainerState;

/// Pods started at once.
const CONCURRENT: usize = 10;
/// The density run stops at this many pods …
const MAX_PODS: usize = 100;
/// … or when less memory than this is left.
const MEMORY_RESERVE_MIB: u64 = 3 * 1024;
/// How long the idle pods settle, and over how long their CPU use is averaged.
const SETTLE: Duration = Duration::from_secs(10);
const CPU_WINDOW: Duration = Duration::from_secs(20);
/// The processes a husk pod runs on the host.
const POD_PROCESSES: [&str; 4] = [
    "containerd-shim-husk-v2",
    "qemu-system-x86_64",
    "husk-vmm",
    "virtiofsd",
];

/// A running pod.
struct Pod {
    id: String,
    container: String,
}

fn main() -> Result<()> {
    let w = CriWorld::start("bench-density", ContainerdFlavour::V2SandboxApi)?;
    let result = measure(&w);
    let finished = w.finish();
    let report = result?;
    finished?;
    print!("{report}");
    Ok(())
}

fn measure(w: &CriWorld) -> Result<String> {
    // Warm-up: image unpacking, page cache.
    let (pod, _) = start_pod(w, "warm")?;
    remove(w, &pod)?;
    let (pod, alone) = start_pod(w, "alone")?;
    remove(w, &pod)?;

    let begin = Instant::now();
    let started: Vec<Result<(Pod, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| s.spawn(move || start_pod(w, &format!("together-{i}"))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a start thread panicked")))
            })
            .collect()
    });
    let together = begin.elapsed();
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for r in started {
        match r {
            Ok((pod, took)) => {
                slowest = slowest.max(took);
                remove(w, &pod)?;
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {CONCURRENT} concurrent pods failed: {}",
        failures.len(),
        failures.join("; ")
    );

    let mut pods = Vec::new();
    let mut last = Duration::ZERO;
    let mut stopped_by = format!("the bound of {MAX_PODS} pods");
    let density = (|| {
        while pods.len() < MAX_PODS {
            let available = mem_available_mib()?;
            if available < MEMORY_RESERVE_MIB {
                stopped_by = format!(
                    "memory: {available} MiB available, below the {MEMORY_RESERVE_MIB} MiB reserve"
                );
                break;
            }
            let (pod, took) = start_pod(w, &format!("idle-{}", pods.len()))?;
            pods.push(pod);
            last = took;
            eprintln!("density_bench: {} pods, last in {took:?}", pods.len());
        }
        std::thread::sleep(SETTLE);
        idle_cost()
    })();
    for pod in &pods {
        remove(w, pod)?;
    }
    let (pss_kib, millicores) = density?;
    let n = pods.len().max(1) as f64;
    Ok(format!(
        "## Density and concurrency (QEMU/TCG, CRI)\n\n\
         | what | value |\n|---|---|\n\
         | one pod started alone (RunPodSandbox → container running) | {} ms |\n\
         | {CONCURRENT} pods started at once: until all run | {} ms ({:.1}× one pod; slowest pod {} ms) |\n\
         | idle pods reached (stopped by {stopped_by}) | {} |\n\
         | start of the last pod | {} ms |\n\
         | host PSS of all pods' processes, per pod | {:.1} MiB ({:.1} GiB in all) |\n\
         | idle CPU of all pods' processes, per pod | {:.1} millicores ({:.0} in all, over {} s) |\n\n\
         Method: `density_bench` (run by `cargo xtask bench`): containerd 2.x with husk's \
         Sandbox API and the test's bridge CNI network; each pod runs one busybox `sleep` \
         container and counts as started when StartContainer returned and ContainerStatus says \
         RUNNING. The concurrent pods start on {CONCURRENT} threads at once. Idle pods are added \
         one at a time until {MAX_PODS} or until `MemAvailable` falls below \
         {MEMORY_RESERVE_MIB} MiB; after {} s of rest, PSS (`smaps_rollup`) and CPU time \
         (`/proc/<pid>/stat`, over {} s) of every shim, QEMU, vsock backend and virtiofsd are \
         summed.\n",
        alone.as_millis(),
        together.as_millis(),
        together.as_secs_f64() / alone.as_secs_f64().max(1e-3),
        slowest.as_millis(),
        pods.len(),
        last.as_millis(),
        pss_kib as f64 / 1024.0 / n,
        pss_kib as f64 / 1024.0 / 1024.0,
        millicores / n,
        millicores,
        CPU_WINDOW.as_secs(),
        SETTLE.as_secs(),
        CPU_WINDOW.as_secs(),
    ))
}

/// Starts pod `name` with one busybox `sleep` container; the pod and how long it took.
fn start_pod(w: &CriWorld, name: &str) -> Result<(Pod, Duration)> {
    let config = w.pod_config(name)?;
    let begin = Instant::now();
    let id = w.run_pod_with(&config)?;
    let container = w.start_container(&id, &config, "app", &["sleep", "1000000"])?;
    let took = begin.elapsed();
    let status = w.client().container_status(&container)?;
    ensure!(
        status.state == ContainerState::ContainerRunning as i32,
        "the container of {name} is not running after StartContainer"
    );
    Ok((Pod { id, container }, took))
}

fn remove(w: &CriWorld, pod: &Pod) -> Result<()> {
    let c = w.client();
    c.stop_container(&pod.container, 0)?;
    c.remove_container(&pod.container)?;
    c.stop_pod_sandbox(&pod.id)?;
    c.remove_pod_sandbox(&pod.id)?;
    Ok(())
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
fn mem_available_mib() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .context("no MemAvailable in /proc/meminfo")
}

/// PSS (KiB) of every pod process now, and their CPU use over [`CPU_WINDOW`] in millicores.
fn idle_cost() -> Result<(u64, f64)> {
    let pids: Vec<i32> = snapshot()
        .into_iter()
        .filter(|p| !p.is_zombie() && POD_PROCESSES.contains(&p.name().as_str()))
        .map(|p| p.pid)
        .collect();
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let before = ticks();
    std::thread::sleep(CPU_WINDOW);
    let used = ticks().saturating_sub(before) as f64 / USER_HZ;
    let pss = pids
        .iter()
        .map(|p| pss_of(u32::try_from(*p).unwrap_or_default()))
        .sum();
    Ok((pss, used / CPU_WINDOW.as_secs_f64() * 1000.0))
}
