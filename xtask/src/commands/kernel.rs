//! `cargo xtask kernel`: the guest kernel, from the cache when the recipe key matches;
//! [`outer`] builds the nested test host's kernel the same way (`cargo xtask build` does
//! both).

use std::time::Instant;

use anyhow::{Context, Result};
use husk_kernel_config::{
    BuildOutcome, Flavour, KernelArtifacts, KernelBuild, KernelSource, kernel_cache_dir,
};

use crate::ui::{note, step};
use crate::workspace::Workspace;

/// Returns the cached guest kernel, building it (~16 min on 2 cores) if needed.
pub fn run(ws: &Workspace) -> Result<KernelArtifacts> {
    flavour(ws, Flavour::Guest)
}

/// Returns the cached outer kernel of the nested-KVM test host (the guest fragments plus
/// `kernel-config/outer/`), building it if needed.
pub fn outer(ws: &Workspace) -> Result<KernelArtifacts> {
    flavour(ws, Flavour::Outer)
}

fn flavour(ws: &Workspace, flavour: Flavour) -> Result<KernelArtifacts> {
    let source = KernelSource::detect().context("finding the kernel source")?;
    let config_dir = ws.root.join("kernel-config");
    let fragments = flavour.fragments(&config_dir)?;
    let patches = flavour.patches(&config_dir)?;
    let mut build = KernelBuild::new(source.clone(), fragments, kernel_cache_dir(&ws.cache))
        .with_patches(patches.clone());
    if flavour != Flavour::Guest {
        build = build.named(flavour.name());
    }
    let layers: Vec<String> = flavour
        .layers()
        .iter()
        .map(|(dir, _)| config_dir.join(dir).display().to_string())
        .collect();
    let patch_names: Vec<&str> = patches.patches().iter().map(|p| p.name.as_str()).collect();
    step(format!(
        "{flavour} kernel: linux-source-6.1 {} + fragments in {}{} -> key {}",
        source.version,
        layers.join(" + "),
        if patch_names.is_empty() {
            String::new()
        } else {
            format!(" + patches {}", patch_names.join(", "))
        },
        build.key()
    ));
    let started = Instant::now();
    let outcome = build.ensure(&mut |msg| note(msg)).with_context(|| {
        format!(
            "building the {flavour} kernel (log: {})",
            build.log_file().display()
        )
    })?;
    let artifacts = outcome.artifacts().clone();
    match outcome {
        BuildOutcome::Cached(_) => note(format!("cached: {}", artifacts.dir.display())),
        BuildOutcome::Built(_) => note(format!(
            "built in {:.0?}: {}",
            started.elapsed(),
            artifacts.dir.display()
        )),
    }
    Ok(artifacts)
}
