//! A test's private identity and directory.
//!
//! Every test gets a unique *tag* (`ht<pid><time>`, hex). The tag is part of its
//! directory, of its containerd socket path, of every container id it creates, and of
//! the `HUSK_TEST_DIR` marker in its containerd's environment (inherited by shims and
//! their children). Whatever mentions the tag belongs to that test, which is how the
//! leak checker attributes processes, mounts and files when tests run concurrently.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::mounts::{MountError, unmount_under};

/// Base directory for test directories (default `<tmp>/husk-tests`).
pub const TMPDIR_ENV: &str = "HUSK_TEST_TMPDIR";
/// Set in each test containerd's environment to the test directory.
pub const MARKER_ENV: &str = "HUSK_TEST_DIR";
/// Test names are shortened to this in paths (socket paths are limited to 108 bytes).
const MAX_NAME: usize = 16;

/// Errors creating or removing a test directory.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// Creating or removing the directory failed.
    #[error("{what} test directory {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Mounts under the directory could not be removed; it was left in place.
    #[error("test directory {dir} still has mounts, not removing it: {source}")]
    Mounts {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: MountError,
    },
}

/// The base directory for test directories.
pub fn base_dir() -> PathBuf {
    std::env::var_os(TMPDIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| std::env::temp_dir().join("husk-tests"), PathBuf::from)
}

/// A unique tag and a directory `<base>/<name>-<tag>`, removed (after unmounting
/// anything left inside) on drop.
#[derive(Debug)]
pub struct TestScope {
    tag: String,
    dir: PathBuf,
    removed: bool,
}

impl TestScope {
    /// Creates the scope for a test called `name`.
    pub fn new(name: &str) -> Result<Self, ScopeError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos() % (1 << 40)).unwrap_or(0));
        let tag = format!("ht{:x}x{nanos:x}", std::process::id());
        let short: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(MAX_NAME)
            .collect();
        let dir = base_dir().join(format!("{short}-{tag}"));
        fs::create_dir_all(&dir).map_err(|source| ScopeError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            tag,
            dir,
            removed: false,
        })
    }

    /// The unique tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A container id for this test: `<short>-<tag>`.
    pub fn id(&self, short: &str) -> String {
        format!("{short}-{}", self.tag)
    }

    /// Unmounts anything under the directory, then removes it.
    pub fn cleanup(&mut self) -> Result<(), ScopeError> {
        if self.removed {
            return Ok(());
        }
        unmount_under(&self.dir).map_err(|source| ScopeError::Mounts {
            dir: self.dir.clone(),
            source,
        })?;
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ScopeError::Io {
                    what: "removing",
                    path: self.dir.clone(),
                    source,
                });
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for TestScope {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("husk-tests: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tags_ids_and_cleanup() {
        let a = TestScope::new("Some Test::name with spaces and more").unwrap();
        let b = TestScope::new("x").unwrap();
        assert_ne!(a.tag(), b.tag());
        assert!(a.dir().is_dir());
        let name = a.dir().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("some-test--name-"), "{name}");
        assert!(name.ends_with(a.tag()));
        assert_eq!(a.id("t"), format!("t-{}", a.tag()));
        let dir = a.dir().to_owned();
        fs::write(dir.join("f"), "x").unwrap();
        drop(a);
        assert!(!dir.exists());
    }
}
