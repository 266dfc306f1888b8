//! `pod_start_bench`: how long a pod with one container takes to start through CRI
//! (RunPodSandbox → CreateContainer → StartContainer returned, the container running), on
//! containerd 2.x with the pause container and with husk's Sandbox API (`sandboxer =
//! "shim"`), in the same run. `cargo xtask bench` runs it with `HUSK_ARTIFACTS` set and puts
//! the Markdown section it prints on stdout in BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use k8s_cri::v1::ContainerState;

/// Pods per mode.
const RUNS: usize = 5;

/// One pod's start, split where CRI's calls split it.
struct Start {
    sandbox: Duration,
    container: Duration,
}

fn main() -> Result<()> {
    let mut rows = Vec::new();
    for (flavour, what) in [
        (
            ContainerdFlavour::V2,
            "pause container (sandboxer `podsandbox`)",
        ),
        (
            ContainerdFlavour::V2SandboxApi,
            "Sandbox API (sandboxer `shim`)",
        ),
    ] {
        let w = CriWorld::start("bench-pod-start", flavour)?;
        let mut starts = Vec::new();
        // One pod first, not counted: image unpacking and page cache.
        for i in 0..=RUNS {
            let start = start_pod(&w, &format!("start-{i}"))?;
            if i > 0 {
                starts.push(start);
            }
        }
        w.finish()?;
        rows.push((what, starts));
    }
    print!("{}", report(&rows));
    Ok(())
}

/// Starts pod `name` with one busybox container, then removes it again.
fn start_pod(w: &CriWorld, name: &str) -> Result<Start> {
    let c = w.client();
    let config = w.pod_config(name)?;
    let begin = Instant::now();
    let pod = w.run_pod_with(&config)?;
    let sandbox = begin.elapsed();
    let id = w.start_container(&pod, &config, "app", &["sleep", "1000000"])?;
    let total = begin.elapsed();
    let status = c.container_status(&id)?;
    ensure!(
        status.state == ContainerState::ContainerRunning as i32,
        "container of {name} not running after StartContainer"
    );
    c.stop_container(&id, 0)?;
    c.remove_container(&id)?;
    c.stop_pod_sandbox(&pod)?;
    c.remove_pod_sandbox(&pod)?;
    Ok(Start {
        sandbox,
        container: total - sandbox,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn report(rows: &[(&str, Vec<Start>)]) -> String {
    let mut out = String::from(
        "## Pod start through CRI: pause container vs Sandbox API\n\n\
         RunPodSandbox, then CreateContainer + StartContainer of one busybox container \
         (`sleep`), until StartContainer returned and ContainerStatus says RUNNING; the \
         test's bridge CNI network; containerd 2.x for both, so only the sandboxer differs. \
         Median (min–max) of 5 pods after one warm-up pod, in ms \
         (`pod_start_bench`, run by `cargo xtask bench`).\n\n\
         | sandboxer | RunPodSandbox | container create + start | pod with one container running |\n\
         |---|---|---|---|\n",
    );
    for (what, starts) in rows {
        let col = |f: &dyn Fn(&Start) -> Duration| {
            let v: Vec<Duration> = starts.iter().map(f).collect();
            let (min, max) = (
                v.iter().min().copied().unwrap_or_default(),
                v.iter().max().copied().unwrap_or_default(),
            );
            format!("{} ({}–{})", ms(median(v)), ms(min), ms(max))
        };
        out.push_str(&format!(
            "| {what} | {} | {} | {} |\n",
            col(&|s| s.sandbox),
            col(&|s| s.container),
            col(&|s| s.sandbox + s.container),
        ));
    }
    out
}
