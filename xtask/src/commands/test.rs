//! `cargo xtask test`: the whole suite — build, fmt, clippy, the fuzz targets, unit and
//! integration tests.
//! Every step runs even if an earlier one failed (one CI run shows every problem); the
//! exit status is non-zero if any failed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use husk_tests::containerd::{CONTAINERD2_ENV, containerd2_from_cache};
use husk_tests::mounts::unmount_under;
use husk_tests::scope::TMPDIR_ENV;
use husk_tests::{ARTIFACTS_ENV, Cmd, LeakScope, TEST_NAMESPACE};

use super::{build, deps, fuzz};
use crate::ui::{note, step};
use crate::workspace::Workspace;

const FMT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const CLIPPY_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// nextest's own per-test timeouts (.config/nextest.toml) bound each test; these bound
/// each run, compile included.
const NEXTEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const NESTED_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The nested-KVM tests (an outer TCG VM running KVM guests) each load both cores for
/// minutes: they run after the rest, one at a time, so neither disturbs the other.
const NESTED_FILTER: &str = "binary(/^nested_/)";

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
    check_free_space(&ws.target_dir)?;
    let run_dir = run_dir()?;
    let outcomes = [
        timed("build", || build::with_nested_host(ws).map(|_| ())),
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
        timed("fuzz targets (vmm/fuzz): build, 2000 inputs each", || {
            fuzz::smoke(ws)
        }),
        timed("cargo nextest run --workspace (all but nested KVM)", || {
            nextest(ws, &run_dir, &format!("not {NESTED_FILTER}"), nextest_args)
                .timeout(NEXTEST_TIMEOUT)
                .run_inherit()
                .map_err(Into::into)
        }),
        timed("cargo nextest run (nested KVM, one at a time)", || {
            nextest(ws, &run_dir, NESTED_FILTER, nextest_args)
                .args(["--test-threads", "1"])
                .timeout(NESTED_TIMEOUT)
                .run_inherit()
                .map_err(Into::into)
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

/// What a build of everything from a fresh clone leaves in the target directory (debug,
/// release, guest and shim profiles, the kernel and initramfs), with room to spare: a fresh
/// clone's `CI=true .ci/run` left 5.1 GB.
const NEEDED_FREE_BYTES: u64 = 8 << 30;

/// Says up front when the disk is too full for the build, rather than letting the linker die
/// with "No space left on device" ten minutes in. A target directory that is already built
/// needs less, so this warns instead of failing.
fn check_free_space(target_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    let stat = nix::sys::statvfs::statvfs(target_dir)
        .with_context(|| format!("reading the free space of {}", target_dir.display()))?;
    let free = stat.blocks_available() * stat.fragment_size();
    if free < NEEDED_FREE_BYTES {
        note(format!(
            "warning: {} has {:.1} GiB free; a build from scratch needs about {} GiB: \
             free some space (e.g. `cargo clean` in other checkouts) if the build fails",
            target_dir.display(),
            free as f64 / f64::from(1u32 << 30),
            NEEDED_FREE_BYTES >> 30
        ));
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

/// `cargo nextest run` over the tests matching `filter` (and `args`); a filter that matches
/// nothing passes, so `cargo xtask test -- <name>` works for either half.
fn nextest(ws: &Workspace, run_dir: &Path, filter: &str, args: &[String]) -> Cmd {
    let artifacts = &ws.artifacts_dir;
    note(format!("{ARTIFACTS_ENV}={}", artifacts.display()));
    note(format!("{TMPDIR_ENV}={}", run_dir.display()));
    let mut cmd = ws
        .cargo()
        .args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--no-tests=pass",
        ])
        .args(["-E", filter])
        .args(args)
        .env(ARTIFACTS_ENV, artifacts)
        .env(husk_kernel_config::CACHE_DIR_ENV, &ws.cache)
        .env(TMPDIR_ENV, run_dir);
    // containerd 2.x for the ctr2 tests: an explicit setting wins, else what `deps`
    // unpacked. If neither exists those tests fail, saying how to get it.
    match std::env::var_os(CONTAINERD2_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => note(format!(
            "{CONTAINERD2_ENV}={} (from the environment)",
            Path::new(&dir).display()
        )),
        None => match containerd2_from_cache(&ws.cache) {
            Ok(dir) => {
                note(format!("{CONTAINERD2_ENV}={}", dir.display()));
                cmd = cmd.env(CONTAINERD2_ENV, dir);
            }
            Err(e) => note(format!("warning: {e}")),
        },
    }
    cmd
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
    for p in &killed {
        note(format!("killed {p}"));
    }
    // The containerd namespaces' parent cgroups (`/<namespace>/<id>` is the default path);
    // CRI's `k8s.io` may belong to a real node too, so a busy one is no finding there.
    let stuck = husk_tests::namespace_cgroups::remove(TEST_NAMESPACE);
    for (dir, e) in &stuck {
        note(format!("cgroup {} is still in use: {e}", dir.display()));
    }
    let _ = husk_tests::namespace_cgroups::remove("k8s.io");
    if killed.is_empty() && stuck.is_empty() {
        note("none");
        return Ok(());
    }
    bail!(
        "{} process(es) and {} namespace cgroup(s) outlived the tests",
        killed.len(),
        stuck.len()
    )
}
