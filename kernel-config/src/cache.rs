//! Where built kernels live: `<cache>/kernel/<key>/{bzImage,vmlinux,.config}`, with
//! `<cache>` = `$HUSK_CACHE_DIR` or `~/.cache/husk`.

use std::path::{Path, PathBuf};

/// Overrides the cache root.
pub const CACHE_DIR_ENV: &str = "HUSK_CACHE_DIR";

/// Errors resolving the cache directory.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `HUSK_CACHE_DIR` nor `HOME` is usable.
    #[error("cannot find a cache directory: set {CACHE_DIR_ENV} or HOME")]
    NoCacheDir,
    /// A relative `HUSK_CACHE_DIR` could not be made absolute.
    #[error("resolving {CACHE_DIR_ENV}: {0}")]
    CurrentDir(std::io::Error),
}

/// The husk cache root: `$HUSK_CACHE_DIR` (made absolute) or `$HOME/.cache/husk`.
pub fn cache_root() -> Result<PathBuf, CacheError> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return Ok(dir);
        }
        return Ok(std::env::current_dir()
            .map_err(CacheError::CurrentDir)?
            .join(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(CacheError::NoCacheDir)?;
    Ok(PathBuf::from(home).join(".cache").join("husk"))
}

/// The kernel part of the cache: `<root>/kernel`.
pub fn kernel_cache_dir(root: &Path) -> PathBuf {
    root.join("kernel")
}

/// The files of one cached kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifacts {
    /// `<cache>/kernel/<key>`.
    pub dir: PathBuf,
}

impl KernelArtifacts {
    /// The compressed, bootable image (`arch/x86/boot/bzImage`).
    pub fn bz_image(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The uncompressed ELF kernel (for direct/PVH boot and debugging).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The final `.config` it was built with.
    pub fn config(&self) -> PathBuf {
        self.dir.join(".config")
    }

    /// All three files exist.
    pub fn is_complete(&self) -> bool {
        [self.bz_image(), self.vmlinux(), self.config()]
            .iter()
            .all(|p| p.is_file())
    }
}
