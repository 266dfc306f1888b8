//! The fuzz targets (`vmm/fuzz`, a cargo workspace of its own because libFuzzer's
//! instrumented builds need nightly flags) built by `cargo xtask test` and each run over a
//! few thousand generated inputs, so they cannot rot unnoticed. The build is the plain,
//! uninstrumented one (stable toolchain, shared target directory): it proves the targets
//! compile against today's crates and that their harness runs. Coverage-guided campaigns
//! stay a manual `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::ui::note;
use crate::workspace::Workspace;

const FUZZ_DIR: &str = "vmm/fuzz";
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Each target's own per-input limit is 5 s (`common/deadline.rs`); this bounds the run.
const RUN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Generated inputs per target, from a fixed seed so a failure reproduces.
const RUNS: &str = "-runs=2000";
const SEED: &str = "-seed=1";

/// Builds every target, then runs each; a crash, a spin past the deadline or a build error
/// fails the step.
pub fn smoke(ws: &Workspace) -> Result<()> {
    let manifest = ws.root.join(FUZZ_DIR).join("Cargo.toml");
    ws.cargo()
        .args(["build", "--bins", "--manifest-path"])
        .arg(&manifest)
        .timeout(BUILD_TIMEOUT)
        .run_inherit()
        .context("building the fuzz targets")?;
    let targets = targets(&manifest)?;
    if targets.is_empty() {
        bail!("{} names no [[bin]] fuzz target", manifest.display());
    }
    // libFuzzer writes crash-<hash> files into its working directory.
    let scratch = ws.target_dir.join("fuzz-smoke");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for target in &targets {
        let binary = ws.target_dir.join("debug").join(target);
        husk_tests::Cmd::new(&binary)
            .args([RUNS, SEED])
            .current_dir(&scratch)
            .timeout(RUN_TIMEOUT)
            .checked()
            .with_context(|| {
                format!(
                    "fuzz target {target} (inputs that fail are in {})",
                    scratch.display()
                )
            })?;
        note(format!("{target}: {RUNS} {SEED} passed"));
    }
    Ok(())
}

/// The `[[bin]]` names of the fuzz crate.
fn targets(manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let names = doc
        .get("bin")
        .and_then(|b| b.as_array_of_tables())
        .map(|bins| {
            bins.iter()
                .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn every_fuzz_target_is_listed() {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(FUZZ_DIR)
            .join("Cargo.toml");
        let names = targets(&manifest).unwrap();
        let sources = std::fs::read_dir(manifest.with_file_name("fuzz_targets"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            names
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            sources
        );
    }
}
