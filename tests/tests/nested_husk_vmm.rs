//! The built-in microVM monitor (`husk-vmm`) end to end, on the nested-KVM test host
//! (`husk_tests::nested`): the `nested_pod` example launches a pod VM through the
//! backend selection the shim uses, waits for the agent on the hybrid vsock, runs a
//! busybox container through the agent and reads its output — with QEMU/KVM (the
//! reference, which proves the harness) and with the built-in backend, alternating, in
//! the same nested host, so their start-up times and monitor memory are measured side by
//! side. The medians are printed as a table for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use husk_tests::nested::{NestedHost, NestedOutput, VMM_BINARY};
use husk_tests::{ARTIFACTS_ENV, Artifacts, LeakScope, TestScope};

/// The example binary, built next to this test by `cargo test`/`cargo nextest run`
/// (their default target selection builds examples).
const DRIVER: &str = "nested_pod";
/// Pods per backend; the backends alternate so load drifts affect both alike.
const ROUNDS: usize = 3;
/// Numeric columns of the `RESULT` lines, in table order.
const METRICS: [&str; 8] = [
    "launch_ms",
    "boot_to_agent_ms",
    "guest_uptime_at_agent_ms",
    "to_container_output_ms",
    "vmm_rss_kib",
    "guest_ram_rss_kib",
    "vmm_rss_excl_guest_kib",
    "vmm_pss_anon_kib",
];

const SCRIPT: &str = r#"
set -u
for round in $(seq 1 "$ROUNDS"); do
    for backend in qemu builtin; do
        echo "== round $round, backend $backend" >&2
        "$NESTED_POD" --config "$HUSK_NESTED_SCRATCH/config.toml" --backend "$backend" \
            --vmm "$VMM" --state-dir /run/husk-nested --busybox /bin/busybox \
            --id "pod-$backend-$round" || echo "FAILED backend=$backend exit=$?"
    done
done
"#;

/// `target/<profile>/examples/nested_pod`, beside this test binary's `deps/`.
fn driver() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let path = profile_dir.join("examples").join(DRIVER);
    ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p husk-tests --examples` (cargo test and \
         cargo nextest run build it when run without target filters)",
        path.display()
    );
    Ok(path)
}

/// The value of `key=` in a `RESULT` line.
fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// The `RESULT` lines of the pods that asked for `backend`.
fn results<'a>(stdout: &'a str, backend: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("RESULT ") && value(l, "requested") == Some(backend))
        .collect()
}

fn median(lines: &[&str], key: &str) -> String {
    median_of(
        lines
            .iter()
            .filter_map(|l| value(l, key)?.parse().ok())
            .collect(),
    )
}

fn median_of(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    v.get(v.len() / 2).map_or("?".into(), u64::to_string)
}

/// What the monitor's boot-timer device logged (through the pod's log) for each built-in
/// boot: milliseconds from VM creation to the agent's ready marker.
fn boot_timer_reports(stderr: &str) -> Vec<u64> {
    const MARK: &str = "guest reached init after ";
    stderr
        .match_indices(MARK)
        .filter_map(|(at, _)| stderr[at + MARK.len()..].split(' ').next()?.parse().ok())
        .collect()
}

/// A husk config for the pods: the artifacts, generous timeouts (double emulation).
fn write_config(artifacts: &Artifacts, path: &Path) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "[hypervisor]\nkernel = {:?}\ninitrd = {:?}\n[virtiofs]\nvirtiofsd_path = {:?}\n\
             [agent]\nconnect_timeout_ms = 90000\nrpc_timeout_ms = 60000\n",
            artifacts.kernel(),
            artifacts.initrd(),
            artifacts.virtiofsd()
        ),
    )?;
    Ok(())
}

/// Every pod of both backends ran its container; returns their `RESULT` lines.
fn check<'a>(out: &'a NestedOutput, stdout: &'a str, vmm: &Path) -> Result<[Vec<&'a str>; 2]> {
    let qemu = results(stdout, "qemu");
    let builtin = results(stdout, "builtin");
    ensure!(
        qemu.len() == ROUNDS,
        "the reference pods (QEMU/KVM) failed inside the nested host, so the harness itself \
         is broken: {}",
        out.describe()
    );
    if builtin.len() != ROUNDS {
        let why = if vmm.is_file() {
            format!("the built-in backend ({}) failed", vmm.display())
        } else {
            format!(
                "{} is missing: `cargo xtask build` builds and collects it",
                vmm.display()
            )
        };
        bail!("{why}: {}", out.describe());
    }
    for line in &qemu {
        ensure!(
            value(line, "backend") == Some("qemu-kvm"),
            "the reference pod did not run on QEMU/KVM — husk's probe found the nested \
             host's /dev/kvm unusable: {line}"
        );
    }
    for line in qemu.iter().chain(&builtin) {
        ensure!(
            value(line, "exit_status") == Some("0"),
            "container failed: {line}"
        );
    }
    Ok([qemu, builtin])
}

#[test]
fn husk_vmm_runs_a_pod_inside_the_nested_host() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    for f in [
        artifacts.kernel(),
        artifacts.initrd(),
        artifacts.virtiofsd(),
    ] {
        ensure!(
            f.is_file(),
            "{} is missing: run `cargo xtask build`",
            f.display()
        );
    }
    let vmm = artifacts.dir().join(VMM_BINARY);
    let scope = TestScope::new("nested-vmm")?;
    write_config(&artifacts, &scope.dir().join("config.toml"))?;
    let host = NestedHost::new(&artifacts, scope.dir())?
        .env(ARTIFACTS_ENV, &artifacts.dir().display().to_string())
        .env("NESTED_POD", &driver()?.display().to_string())
        .env("VMM", &vmm.display().to_string())
        .env("ROUNDS", &ROUNDS.to_string());
    let out = host.run(SCRIPT, Duration::from_secs(400))?;
    let stdout = out.stdout_text();
    eprintln!("{}", stdout.trim_end());
    eprintln!(
        "outer boot {:?}, whole outer run {:?}",
        out.boot, out.elapsed
    );
    let [qemu, builtin] = check(&out, &stdout, &vmm)?;
    let boot_timer = boot_timer_reports(&out.stderr_text());
    ensure!(
        boot_timer.len() == ROUNDS,
        "the boot-timer device reported {} of {ROUNDS} built-in boots: {}",
        boot_timer.len(),
        out.describe()
    );
    eprintln!("medians of {ROUNDS} pods each:\n| metric | QEMU/KVM | husk-vmm |\n|---|---|---|");
    for key in METRICS {
        eprintln!(
            "| {key} | {} | {} |",
            median(&qemu, key),
            median(&builtin, key)
        );
    }
    eprintln!("| boot_timer_init_ms | - | {} |", median_of(boot_timer));
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}
