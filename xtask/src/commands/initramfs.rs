//! `cargo xtask initramfs`: a static `husk-agent` as `/init` of `target/husk/initrd.img`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use husk_rootfs::{Initramfs, ensure_static_elf};

use crate::ui::{note, step};
use crate::workspace::Workspace;

/// The guest is x86-64 Linux with glibc linked in statically.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const AGENT_BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Builds the agent (unless `agent` names a prebuilt one) and writes the initramfs;
/// returns its path.
pub fn run(ws: &Workspace, agent: Option<&Path>) -> Result<PathBuf> {
    let agent = match agent {
        Some(path) => path.to_owned(),
        None => build_agent(ws)?,
    };
    let bytes =
        std::fs::read(&agent).with_context(|| format!("reading the agent {}", agent.display()))?;
    ensure_static_elf(&bytes)
        .with_context(|| format!("{} cannot be the guest's /init", agent.display()))?;
    std::fs::create_dir_all(&ws.artifacts_dir)
        .with_context(|| format!("creating {}", ws.artifacts_dir.display()))?;
    let out = ws.artifacts_dir.join("initrd.img");
    step(format!(
        "writing {} (/init = {})",
        out.display(),
        agent.display()
    ));
    Initramfs::with_init(bytes).write_file(&out)?;
    note(format!(
        "{} bytes",
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or_default()
    ));
    Ok(out)
}

/// Cargo profile of the guest agent build.
const GUEST_PROFILE: &str = "guest";
/// The tests' static inotify watcher (`tests/inotify-probe`), copied into the artifacts.
const INOTIFY_PROBE: &str = "husk-inotify-probe";

/// `cargo build --profile guest -p husk-agent --target x86_64-unknown-linux-gnu`, statically.
/// The `guest` profile (workspace Cargo.toml) optimizes for size: every byte of the agent
/// stays resident in every pod VM.
/// With an explicit `--target`, RUSTFLAGS only reach target artifacts, so build scripts
/// and proc macros stay dynamic and shared with other builds.
fn build_agent(ws: &Workspace) -> Result<PathBuf> {
    step(format!(
        "building husk-agent statically: cargo build --profile {GUEST_PROFILE} -p husk-agent --target {GUEST_TARGET}"
    ));
    ws.cargo()
        .args([
            "build",
            "--profile",
            GUEST_PROFILE,
            "-p",
            "husk-agent",
            // Built the same way for the integration tests, which run it in containers.
            "-p",
            INOTIFY_PROBE,
            "--target",
            GUEST_TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("LIBSECCOMP_LINK_TYPE", "static")
        .env("LIBSECCOMP_LIB_PATH", "/usr/lib/x86_64-linux-gnu")
        .timeout(AGENT_BUILD_TIMEOUT)
        .run_inherit()
        .context("building husk-agent")?;
    let built = ws.target_dir.join(GUEST_TARGET).join(GUEST_PROFILE);
    std::fs::create_dir_all(&ws.artifacts_dir)
        .with_context(|| format!("creating {}", ws.artifacts_dir.display()))?;
    let probe = ws.artifacts_dir.join(INOTIFY_PROBE);
    std::fs::copy(built.join(INOTIFY_PROBE), &probe)
        .with_context(|| format!("copying the test probe to {}", probe.display()))?;
    let bin = built.join("husk-agent");
    if !bin.is_file() {
        bail!(
            "cargo built package husk-agent but {} does not exist: the package needs a binary \
             target named `husk-agent` (agent/src/main.rs)",
            bin.display()
        );
    }
    Ok(bin)
}
