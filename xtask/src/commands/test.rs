//! `cargo xtask test`: the whole suite — build, fmt, clippy, unit and integration tests.
//! Every step runs even if an earlier one failed (one CI run shows every problem); the
//! exit status is non-zero if any failed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use husk_tests::mounts::unmount_under;
use husk_tests::scope::TMPDIR_ENV;
use husk_tests::{ARTIFACTS_ENV, LeakScope, TEST_NAMESPACE};

use super::{build, deps};
use crate::ui::{note, step};
use crate::workspace::Workspace;

const FMT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const CLIPPY_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// nextest's own per-test timeouts (.config/nextest.toml) bound each test; this bounds
/// the whole run, compile included.
const NEXTEST_TIMEOUT: Duration = Duration::from_secs(80 * 60);

struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<()>,
}

fn timed(name: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    step(name);
    let start = Instant::now();
    let result = f();
    if let Err(e) = &result {
        eprintln!("error: {name}: {e:#}");
    }
    Outcome {
        name,
        took: start.elapsed(),
        result,
    }
}

/// Runs the suite; `nextest_args` go to `cargo nextest run`.
pub fn run(ws: &Workspace, nextest_args: &[String]) -> Result<()> {
    deps::run(ws).context("installing dependencies")?;
    let run_dir = run_dir()?;
    let outcomes = [
        timed("build", || build::run(ws).map(|_| ())),
        timed("cargo fmt --all --check", || {
            Ok(ws
                .cargo()
                .args(["fmt", "--all", "--check"])
                .timeout(FMT_TIMEOUT)
                .run_inherit()?)
        }),
        timed(
            "cargo clippy --workspace --all-targets -- -D warnings",
            || {
                Ok(ws
                    .cargo()
                    .args([
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .timeout(CLIPPY_TIMEOUT)
                    .run_inherit()?)
            },
        ),
        timed("cargo nextest run --workspace", || {
            nextest(ws, &run_dir, nextest_args)
        }),
        timed("leftovers of the tests", || sweep(&run_dir)),
    ];

    println!();
    step("summary");
    for o in &outcomes {
        let verdict = if o.result.is_ok() { "ok    " } else { "FAILED" };
        note(format!("{verdict} {:<55} {:>8.1?}", o.name, o.took));
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} steps failed", outcomes.len());
    }
    Ok(())
}

/// A directory for this run's test directories, so leftovers can be found and swept.
/// Kept short: containerd and shims put Unix sockets (108-byte paths) below it.
fn run_dir() -> Result<PathBuf> {
    let dir = husk_tests::scope::base_dir().join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn nextest(ws: &Workspace, run_dir: &Path, args: &[String]) -> Result<()> {
    let artifacts = &ws.artifacts_dir;
    note(format!("{ARTIFACTS_ENV}={}", artifacts.display()));
    note(format!("{TMPDIR_ENV}={}", run_dir.display()));
    ws.cargo()
        .args(["nextest", "run", "--workspace", "--no-fail-fast"])
        .args(args)
        .env(ARTIFACTS_ENV, artifacts)
        .env(husk_kernel_config::CACHE_DIR_ENV, &ws.cache)
        .env(TMPDIR_ENV, run_dir)
        .timeout(NEXTEST_TIMEOUT)
        .run_inherit()?;
    Ok(())
}

/// Kills whatever tests killed by a timeout left behind (anything mentioning this run's
/// directory, and its descendants), unmounts and removes the directory. Finding
/// anything is a failure: a test leaked.
fn sweep(run_dir: &Path) -> Result<()> {
    let needle = run_dir.to_string_lossy();
    let scope = LeakScope::new(&needle, TEST_NAMESPACE, run_dir, u64::MAX);
    let killed = scope.kill_attributed();
    unmount_under(run_dir)?;
    std::fs::remove_dir_all(run_dir).with_context(|| format!("removing {}", run_dir.display()))?;
    if killed.is_empty() {
        note("none");
        return Ok(());
    }
    for p in &killed {
        note(format!("killed {p}"));
    }
    bail!("{} process(es) outlived the tests", killed.len())
}
