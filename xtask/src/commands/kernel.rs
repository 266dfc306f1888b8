//! `cargo xtask kernel`: the guest kernel, from the cache when the recipe key matches.

use anyhow::{Context, Result};
use husk_kernel_config::{
    BuildOutcome, FragmentSet, KernelArtifacts, KernelBuild, KernelSource, kernel_cache_dir,
};

use crate::ui::{note, step};
use crate::workspace::Workspace;

/// Returns the cached kernel, building it (~16 min on 2 cores) if needed.
pub fn run(ws: &Workspace) -> Result<KernelArtifacts> {
    let source = KernelSource::detect().context("finding the kernel source")?;
    let fragments_dir = ws.root.join("kernel-config/fragments");
    let fragments = FragmentSet::load(&fragments_dir)?;
    let build = KernelBuild::new(source.clone(), fragments, kernel_cache_dir(&ws.cache));
    step(format!(
        "guest kernel: linux-source-6.1 {} + fragments in {} -> key {}",
        source.version,
        fragments_dir.display(),
        build.key()
    ));
    let outcome = build.ensure(&mut |msg| note(msg)).with_context(|| {
        format!(
            "building the guest kernel (log: {})",
            build.log_file().display()
        )
    })?;
    let artifacts = outcome.artifacts().clone();
    match outcome {
        BuildOutcome::Cached(_) => note(format!("cached: {}", artifacts.dir.display())),
        BuildOutcome::Built(_) => note(format!("built: {}", artifacts.dir.display())),
    }
    Ok(artifacts)
}
