//! The pod network's throughput and round-trip time next to two plain namespaces on the same
//! bridge: the `net_bench` driver of the test crate (it needs CRI, which xtask itself is
//! built without), run against this build's artifacts. Also how any such driver runs.

use std::time::Duration;

use anyhow::{Context, Result};
use husk_tests::{ARTIFACTS_ENV, Artifacts, Cmd};

use crate::ui::step;
use crate::workspace::Workspace;

const DRIVER: &str = "net_bench";
/// A cold build of the driver (the test crate and its dependencies) takes minutes.
const DRIVER_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Two pods, three paths of throughput and pings under TCG.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The Markdown section for BENCHMARKS.md.
pub fn section(ws: &Workspace, artifacts: &Artifacts) -> Result<String> {
    step("pod network: throughput and RTT through CRI and the bridge CNI network");
    run_driver(ws, artifacts, DRIVER, RUN_TIMEOUT)
}

/// Builds the test crate's driver binary `name`; its path.
pub fn build_driver(ws: &Workspace, name: &str) -> Result<std::path::PathBuf> {
    ws.cargo()
        .args(["build", "-p", "husk-tests", "--bin", name])
        .timeout(DRIVER_BUILD_TIMEOUT)
        .run_inherit()
        .with_context(|| format!("building the {name} driver"))?;
    Ok(ws.target_dir.join("debug").join(name))
}

/// Builds the test crate's bench driver `name` and runs it against `artifacts`; its
/// stdout (a Markdown section).
pub fn run_driver(
    ws: &Workspace,
    artifacts: &Artifacts,
    name: &str,
    timeout: Duration,
) -> Result<String> {
    let driver = build_driver(ws, name)?;
    let out = Cmd::new(&driver)
        .env(ARTIFACTS_ENV, artifacts.dir())
        .timeout(timeout)
        .checked()
        .with_context(|| format!("running {name}"))?;
    Ok(out.stdout_text())
}
