//! The pod network's throughput and round-trip time next to two plain namespaces on the same
//! bridge: the `net_bench` driver of the test crate (it needs CRI, which xtask itself is
//! built without), run against this build's artifacts.

use std::time::Duration;

use anyhow::Result;
use husk_tests::Artifacts;

use crate::ui::step;
use crate::workspace::Workspace;

const DRIVER: &str = "net_bench";
/// Two pods, three paths of throughput and pings under TCG.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The Markdown section for BENCHMARKS.md.
pub fn section(ws: &Workspace, artifacts: &Artifacts) -> Result<String> {
    step("pod network: throughput and RTT through CRI and the bridge CNI network");
    super::driver::run(ws, artifacts, DRIVER, RUN_TIMEOUT)
}
