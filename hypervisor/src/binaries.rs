//! Finding the programs a pod runs: one lookup for husk's own (`husk-vmm`, looked for beside
//! the shim first, where `cargo xtask install` puts it) and for the system's (QEMU, on
//! `PATH`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::vmm::VmmError;

/// Where a bare program name is looked for (a name with a `/` is taken as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Beside the running executable (and one level up, for test binaries in
    /// `target/*/deps`), then on `PATH`.
    BesideShimThenPath,
    /// On `PATH` only.
    Path,
}

/// The executable file `name` stands for.
pub fn locate(name: &str, search: Search) -> Result<PathBuf, VmmError> {
    let mut candidates = Vec::new();
    if name.contains('/') {
        candidates.push(PathBuf::from(name));
    } else {
        if search == Search::BesideShimThenPath {
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                candidates.push(dir.join(name));
                if let Some(up) = dir.parent() {
                    candidates.push(up.join(name));
                }
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
    }
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(|| VmmError::HypervisorBinary {
            name: name.to_string(),
            reason: match (name.contains('/'), search) {
                (true, _) => "does not exist or is not executable".into(),
                (false, Search::BesideShimThenPath) => {
                    "was not found beside the shim or on PATH".into()
                }
                (false, Search::Path) => "was not found on PATH".into(),
            },
            fix: match search {
                Search::BesideShimThenPath => {
                    "install husk (`cargo xtask install`) or set hypervisor.vmm_path in the husk config"
                }
                Search::Path => {
                    "install qemu-system-x86 or set hypervisor.qemu_path in the husk config"
                }
            },
        })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_and_names_what_is_missing() {
        assert!(locate("sh", Search::Path).is_ok());
        assert!(locate("sh", Search::BesideShimThenPath).is_ok());
        let err = locate("/nonexistent/qemu", Search::Path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/qemu") && err.contains("not executable"),
            "{err}"
        );
        let err = locate("no-such-binary", Search::Path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not found on PATH") && err.contains("qemu_path"),
            "{err}"
        );
        let err = locate("no-such-binary", Search::BesideShimThenPath)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("beside the shim") && err.contains("vmm_path"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_or_plain_file_is_not_a_program() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        for p in [dir.path(), file.as_path()] {
            assert!(locate(p.to_str().unwrap(), Search::Path).is_err());
        }
    }
}
