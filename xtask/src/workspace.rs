//! Where things are: the repository, cargo's target directory, the artifacts directory
//! and the husk cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Paths every task needs.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The repository root (the workspace `Cargo.toml`'s directory).
    pub root: PathBuf,
    /// Cargo's target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
    pub target_dir: PathBuf,
    /// `<target>/husk`: everything `cargo xtask build` produces.
    pub artifacts_dir: PathBuf,
    /// `$HUSK_CACHE_DIR` or `~/.cache/husk`.
    pub cache: PathBuf,
}

impl Workspace {
    /// Finds the paths from this crate's location and the environment.
    pub fn discover() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask is not inside the workspace")?
            .to_owned();
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => cwd.join(dir),
            None => root.join("target"),
        };
        let cache = husk_kernel_config::cache_root().context("locating the husk cache")?;
        Ok(Self {
            artifacts_dir: target_dir.join("husk"),
            root,
            target_dir,
            cache,
        })
    }

    /// The cargo binary running us (so a toolchain override is honoured).
    pub fn cargo(&self) -> husk_tests::Cmd {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        husk_tests::Cmd::new(cargo)
            .current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &self.target_dir)
    }

    /// Where `cargo xtask deps` installs virtiofsd.
    pub fn virtiofsd(&self) -> PathBuf {
        self.tools_dir().join("bin/virtiofsd")
    }

    /// `cargo install --root` for tools.
    pub fn tools_dir(&self) -> PathBuf {
        self.cache.join("tools")
    }
}
