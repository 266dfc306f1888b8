//! CRI ContainerStats, ListContainerStats and PodSandboxStats report the guest's real
//! figures: a container burning CPU shows it, one holding 64 MiB shows it, an idle one
//! does not, and the writable layer a container wrote to shows its size. On containerd
//! 1.6 and 2.x.

mod cri_common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_common::{stop_and_remove_container, stop_and_remove_pod, wait_until};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use k8s_cri::v1::{ContainerStats, ContainerStatsFilter};

const MIB: u64 = 1 << 20;
/// What the busy container holds: dd's buffer, filled and kept while dd blocks on a pipe
/// nobody reads.
const HELD: u64 = 64 * MIB;
/// What it writes to its writable layer.
const WRITTEN: u64 = 4 * MIB;
/// How long CPU usage is sampled over.
const SAMPLE: Duration = Duration::from_secs(3);

fn working_set(s: &ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value)
}

fn cpu_nanos(s: &ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

fn layer_bytes(s: &ContainerStats) -> u64 {
    s.writable_layer
        .as_ref()
        .and_then(|l| l.used_bytes.as_ref())
        .map_or(0, |v| v.value)
}

fn stats(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-stats", flavour)?;
    let c = w.client();
    // kubelet always gives a pod cgroup; containerd reads the pod's figures from it (the
    // shim runs the pod's VM there).
    let mut cfg = w.pod_config("stats")?;
    let parent = format!(
        "/husk-test/pod{}",
        cfg.metadata.as_ref().map_or("", |m| m.uid.as_str())
    );
    cfg.linux.get_or_insert_with(Default::default).cgroup_parent = parent.clone();
    let pod = w.run_pod_with(&cfg)?;
    let idle = w.start_container(&pod, &cfg, "idle", &["sleep", "100000"])?;
    let script = format!(
        "head -c {WRITTEN} /dev/zero > /written; \
         dd if=/dev/zero bs={HELD} count=1 2>/dev/null | sleep 100000 & \
         while :; do :; done"
    );
    let busy = w.start_container(&pod, &cfg, "busy", &["sh", "-c", &script])?;

    wait_until(
        "the busy container's working set reaching 64 MiB",
        Duration::from_secs(60),
        || {
            c.container_stats(&busy)
                .is_ok_and(|s| working_set(&s) >= HELD)
        },
    )?;
    let (busy_1, idle_1) = (c.container_stats(&busy)?, c.container_stats(&idle)?);
    std::thread::sleep(SAMPLE);
    let (busy_2, idle_2) = (c.container_stats(&busy)?, c.container_stats(&idle)?);
    eprintln!("busy: {busy_2:?}\nidle: {idle_2:?}");

    let sampled = u64::try_from(SAMPLE.as_nanos())?;
    let busy_cpu = cpu_nanos(&busy_2).saturating_sub(cpu_nanos(&busy_1));
    let idle_cpu = cpu_nanos(&idle_2).saturating_sub(cpu_nanos(&idle_1));
    ensure!(
        busy_cpu >= sampled / 4,
        "the busy container used {busy_cpu} ns of CPU in {SAMPLE:?}"
    );
    ensure!(
        idle_cpu < busy_cpu / 10,
        "the idle container used {idle_cpu} ns of CPU in {SAMPLE:?} (busy: {busy_cpu})"
    );
    ensure!(
        cpu_nanos(&idle_2) > 0,
        "the idle container reports no CPU use at all"
    );
    ensure!(
        working_set(&idle_2) < 16 * MIB,
        "the idle container's working set is {} MiB",
        working_set(&idle_2) / MIB
    );
    // containerd measures snapshots in the background (`stats_collect_period`, 10 s).
    wait_until(
        "the busy container's writable layer showing what it wrote",
        Duration::from_secs(45),
        || {
            c.container_stats(&busy)
                .is_ok_and(|s| layer_bytes(&s) >= WRITTEN)
        },
    )?;

    let listed = c.list_container_stats(Some(ContainerStatsFilter {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    }))?;
    let mut ids: Vec<&str> = listed
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.as_str()))
        .collect();
    ids.sort_unstable();
    let mut wanted = vec![busy.as_str(), idle.as_str()];
    wanted.sort_unstable();
    ensure!(ids == wanted, "ListContainerStats of the pod lists {ids:?}");
    ensure!(
        listed
            .iter()
            .all(|s| cpu_nanos(s) > 0 && working_set(s) > 0),
        "ListContainerStats has empty figures: {listed:?}"
    );

    let pod_stats = c.pod_sandbox_stats(&pod)?;
    let linux = pod_stats
        .linux
        .as_ref()
        .context("PodSandboxStats without linux figures")?;
    let mut in_pod: Vec<&str> = linux
        .containers
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.as_str()))
        .collect();
    in_pod.sort_unstable();
    ensure!(
        in_pod == wanted,
        "PodSandboxStats lists containers {in_pod:?}"
    );
    let pod_cpu = linux
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    let pod_memory = linux
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    ensure!(
        pod_cpu >= cpu_nanos(&busy_2) && pod_memory >= HELD,
        "the pod's figures ({pod_cpu} ns CPU, {pod_memory} bytes) do not cover its busy \
         container's"
    );

    for id in [&busy, &idle] {
        stop_and_remove_container(c, id, 0)?;
    }
    stop_and_remove_pod(&w, &pod)?;
    // The pod cgroup is kubelet's to remove (here: the test's); the shim removed its own
    // below it.
    let stuck = husk_tests::namespace_cgroups::remove(parent.trim_start_matches('/'));
    ensure!(stuck.is_empty(), "the pod cgroup could not go: {stuck:?}");
    w.finish()?;
    Ok(())
}

#[test]
fn stats_on_containerd_1_6() -> Result<()> {
    stats(ContainerdFlavour::System)
}

#[test]
fn stats_on_containerd_2() -> Result<()> {
    stats(ContainerdFlavour::V2)
}

#[test]
fn stats_on_containerd_2_sandbox_api() -> Result<()> {
    stats(ContainerdFlavour::V2SandboxApi)
}
