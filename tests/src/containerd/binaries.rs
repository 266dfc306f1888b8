//! Which containerd a test runs, and where its binaries come from: the machine's (1.6,
//! on `PATH`) or containerd 2.x, unpacked by `cargo xtask deps` into the husk cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ContainerdError;
use crate::cmd::Cmd;

/// Names the directory holding containerd 2.x's `containerd` and `ctr` binaries
/// (`cargo xtask test` sets it; without it the tests look in the husk cache).
pub const CONTAINERD2_ENV: &str = "HUSK_CONTAINERD2";
/// `<cache>/containerd2`: where `cargo xtask deps` unpacks containerd 2.x releases, one
/// directory per Debian version (`<version>/usr/bin/{containerd,ctr}`).
pub const CONTAINERD2_CACHE_DIR: &str = "containerd2";
/// In [`CONTAINERD2_CACHE_DIR`]: a one-line file naming the version directory in use.
pub const CONTAINERD2_CURRENT: &str = "current";
/// The binaries a containerd 2.x directory must hold.
pub const CONTAINERD2_BINARIES: [&str; 2] = ["containerd", "ctr"];
/// Deadline for `containerd --version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Which containerd to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContainerdFlavour {
    /// The machine's containerd (Debian 12: 1.6.20): `containerd` and `ctr` from `PATH`.
    #[default]
    System,
    /// containerd 2.x from [`containerd2_dir`] (its own `containerd` and `ctr`).
    V2,
    /// containerd 2.x with its CRI running husk pods through the shim's Sandbox API
    /// (`sandboxer = "shim"`): no pause container.
    V2SandboxApi,
}

impl std::fmt::Display for ContainerdFlavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerdFlavour::System => "system containerd",
            ContainerdFlavour::V2 => "containerd 2.x",
            ContainerdFlavour::V2SandboxApi => "containerd 2.x with the Sandbox API",
        })
    }
}

impl ContainerdFlavour {
    /// containerd 2.x, in either CRI mode.
    pub fn is_v2(self) -> bool {
        self != ContainerdFlavour::System
    }

    /// Locates the `containerd` and `ctr` binaries of this flavour.
    pub fn binaries(self) -> Result<ContainerdBinaries, ContainerdError> {
        match self {
            ContainerdFlavour::System => Ok(ContainerdBinaries {
                containerd: PathBuf::from("containerd"),
                ctr: PathBuf::from("ctr"),
            }),
            ContainerdFlavour::V2 | ContainerdFlavour::V2SandboxApi => {
                let dir = containerd2_dir()?;
                Ok(ContainerdBinaries {
                    containerd: dir.join("containerd"),
                    ctr: dir.join("ctr"),
                })
            }
        }
    }

    /// Whether a containerd reporting `version` belongs to this flavour; `Err` says what
    /// is wanted instead.
    pub(super) fn accepts(self, version: &str) -> Result<(), &'static str> {
        match self {
            ContainerdFlavour::System => Ok(()),
            ContainerdFlavour::V2 | ContainerdFlavour::V2SandboxApi => match major_version(version)
            {
                Some(m) if m >= 2 => Ok(()),
                _ => Err("2.0 or newer"),
            },
        }
    }
}

/// The programs of one containerd flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdBinaries {
    /// The daemon.
    pub containerd: PathBuf,
    /// Its client, of the same release.
    pub ctr: PathBuf,
}

/// `<cache_root>/containerd2/<version>/usr/bin`: where `cargo xtask deps` keeps the
/// binaries of a containerd 2.x release.
pub fn containerd2_bin_dir(cache_root: &Path, version: &str) -> PathBuf {
    cache_root
        .join(CONTAINERD2_CACHE_DIR)
        .join(version)
        .join("usr/bin")
}

/// Binaries of [`CONTAINERD2_BINARIES`] missing from `dir`.
pub fn missing_containerd2_binaries(dir: &Path) -> Vec<&'static str> {
    CONTAINERD2_BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect()
}

/// The containerd 2.x binary directory recorded in `<cache_root>/containerd2/current`,
/// checked to hold `containerd` and `ctr`.
pub fn containerd2_from_cache(cache_root: &Path) -> Result<PathBuf, ContainerdError> {
    let current = cache_root
        .join(CONTAINERD2_CACHE_DIR)
        .join(CONTAINERD2_CURRENT);
    let version =
        fs::read_to_string(&current).map_err(|e| ContainerdError::Containerd2Missing {
            reason: format!(
                "{CONTAINERD2_ENV} is not set and {} is unreadable ({e})",
                current.display()
            ),
        })?;
    let version = version.trim();
    if version.is_empty() || version.contains('/') || version.starts_with('.') {
        return Err(ContainerdError::Containerd2Missing {
            reason: format!(
                "{} names no version directory: {version:?}",
                current.display()
            ),
        });
    }
    let dir = containerd2_bin_dir(cache_root, version);
    let missing = missing_containerd2_binaries(&dir);
    if !missing.is_empty() {
        return Err(ContainerdError::Containerd2Missing {
            reason: format!(
                "{} (named by {}) lacks {missing:?}",
                dir.display(),
                current.display()
            ),
        });
    }
    Ok(dir)
}

/// The directory with containerd 2.x's `containerd` and `ctr`: `$HUSK_CONTAINERD2`, or
/// else the one `cargo xtask deps` recorded in the husk cache.
pub fn containerd2_dir() -> Result<PathBuf, ContainerdError> {
    if let Some(dir) = std::env::var_os(CONTAINERD2_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(ContainerdError::Containerd2Missing {
                reason: format!(
                    "{CONTAINERD2_ENV}={} must be an absolute path",
                    dir.display()
                ),
            });
        }
        let missing = missing_containerd2_binaries(&dir);
        if !missing.is_empty() {
            return Err(ContainerdError::Containerd2Missing {
                reason: format!("{CONTAINERD2_ENV}={} lacks {missing:?}", dir.display()),
            });
        }
        return Ok(dir);
    }
    let cache =
        husk_kernel_config::cache_root().map_err(|e| ContainerdError::Containerd2Missing {
            reason: format!("{CONTAINERD2_ENV} is not set and the husk cache is unknown ({e})"),
        })?;
    containerd2_from_cache(&cache)
}

/// The version `containerd --version` (or `ctr --version`) prints: the third word, e.g.
/// `1.6.20~ds1` or `2.1.9+unknown`, without a leading `v`.
pub fn parse_version(output: &str) -> Option<String> {
    let word = output.split_whitespace().nth(2)?;
    let word = word.strip_prefix('v').unwrap_or(word);
    word.starts_with(|c: char| c.is_ascii_digit())
        .then(|| word.to_owned())
}

/// The major version of `version` (`2` for `2.1.9+unknown`).
pub fn major_version(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// `<containerd> --version`, parsed.
pub fn binary_version(containerd: &Path) -> Result<String, ContainerdError> {
    let out = Cmd::new(containerd)
        .arg("--version")
        .timeout(VERSION_TIMEOUT)
        .checked()
        .map_err(|e| ContainerdError::Version {
            binary: containerd.to_owned(),
            source: Box::new(e),
        })?;
    let text = out.stdout_text();
    parse_version(&text).ok_or_else(|| ContainerdError::VersionUnknown {
        binary: containerd.to_owned(),
        output: text.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_for_both_releases() {
        let v16 = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n";
        let v2 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n";
        assert_eq!(parse_version(v16).as_deref(), Some("1.6.20~ds1"));
        assert_eq!(parse_version(v2).as_deref(), Some("2.1.9+unknown"));
        assert_eq!(
            parse_version("containerd x v2.0.0").as_deref(),
            Some("2.0.0")
        );
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(major_version("2.1.9+unknown"), Some(2));
        assert!(ContainerdFlavour::V2.accepts("2.1.9+unknown").is_ok());
        assert!(ContainerdFlavour::V2.accepts("1.6.20~ds1").is_err());
        assert!(ContainerdFlavour::System.accepts("1.6.20~ds1").is_ok());
    }
    #[test]
    fn containerd2_is_found_through_the_cache_record() {
        let root = std::env::temp_dir().join(format!("husk-cd2-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let err = containerd2_from_cache(&root).unwrap_err().to_string();
        assert!(err.contains("cargo xtask deps"), "{err}");
        let base = root.join(CONTAINERD2_CACHE_DIR);
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join(CONTAINERD2_CURRENT), "2.1.9+ds1-5\n").unwrap();
        let bin = containerd2_bin_dir(&root, "2.1.9+ds1-5");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("containerd"), "").unwrap();
        let err = containerd2_from_cache(&root).unwrap_err().to_string();
        assert!(
            err.contains("[\"ctr\"]") && err.contains("cargo xtask deps"),
            "{err}"
        );
        fs::write(bin.join("ctr"), "").unwrap();
        assert_eq!(containerd2_from_cache(&root).unwrap(), bin);
        fs::write(base.join(CONTAINERD2_CURRENT), "../x\n").unwrap();
        assert!(containerd2_from_cache(&root).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
