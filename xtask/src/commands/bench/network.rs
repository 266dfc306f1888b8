//! The pod network's throughput and round-trip time next to two plain namespaces on the same
//! bridge: the `net_bench` driver of the test crate (it needs CRI, which xtask itself is
//! built without), run against this build's artifacts.

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
    ws.cargo()
        .args(["build", "-p", "husk-tests", "--bin", DRIVER])
        .timeout(DRIVER_BUILD_TIMEOUT)
        .run_inherit()
        .context("building the net_bench driver")?;
    let driver = ws.target_dir.join("debug").join(DRIVER);
    let out = Cmd::new(&driver)
        .env(ARTIFACTS_ENV, artifacts.dir())
        .timeout(RUN_TIMEOUT)
        .checked()
        .context("running net_bench")?;
    Ok(out.stdout_text())
}
