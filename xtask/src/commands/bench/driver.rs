//! The test crate's driver binaries (`nested_pod`, `net_bench`, …): built on demand, since
//! they need the test crate's features, which xtask itself is built without.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_tests::{ARTIFACTS_ENV, Artifacts, Cmd};

use crate::workspace::Workspace;

/// A cold build of a driver (the test crate and its dependencies) takes minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Builds the test crate's driver binary `name`; its path.
pub fn build(ws: &Workspace, name: &str) -> Result<PathBuf> {
    ws.cargo()
        .args(["build", "-p", "husk-tests", "--bin", name])
        .timeout(BUILD_TIMEOUT)
        .run_inherit()
        .with_context(|| format!("building the {name} driver"))?;
    Ok(ws.target_dir.join("debug").join(name))
}

/// Builds the test crate's bench driver `name` and runs it against `artifacts`; its
/// stdout (a Markdown section).
pub fn run(ws: &Workspace, artifacts: &Artifacts, name: &str, timeout: Duration) -> Result<String> {
    let driver = build(ws, name)?;
    let out = Cmd::new(&driver)
        .env(ARTIFACTS_ENV, artifacts.dir())
        .timeout(timeout)
        .checked()
        .with_context(|| format!("running {name}"))?;
    Ok(out.stdout_text())
}
