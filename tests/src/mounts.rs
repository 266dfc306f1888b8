//! Mounts in the caller's mount namespace (`/proc/self/mountinfo`): finding the ones
//! under a test's directories and unmounting them before the directories are removed
//! (removing a directory tree with a bind mount inside would delete the mount source).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// Errors listing or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    Read(std::io::Error),
    /// Some mounts stayed after unmounting.
    #[error("could not unmount {}: {}", .paths.join(", "), .reason)]
    Stuck {
        /// Mount points still present.
        paths: Vec<String>,
        /// The last error seen.
        reason: String,
    },
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (field 5 of each mountinfo line).
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Every mount point in this mount namespace.
pub fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Read)?;
    Ok(parse_mount_points(&text))
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    Ok(mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect())
}

/// Unmounts everything at or below `dir`, deepest first (lazily if busy), and checks
/// that nothing is left.
pub fn unmount_under(dir: &Path) -> Result<(), MountError> {
    let mut last_error = String::new();
    // Stacked mounts need one pass per layer; a few passes are plenty.
    for _ in 0..8 {
        let mut mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            if let Err(e) = umount2(&m, MntFlags::empty()) {
                if let Err(e2) = umount2(&m, MntFlags::MNT_DETACH) {
                    last_error = format!("{}: {e} / lazily: {e2}", m.display());
                }
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(MountError::Stuck {
            paths: left.iter().map(|p| p.display().to_string()).collect(),
            reason: last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    99 22 0:50 / /tmp/a\\040b rw - overlay overlay rw,lowerdir=x\n";
        assert_eq!(
            parse_mount_points(info),
            vec![PathBuf::from("/"), PathBuf::from("/tmp/a b")]
        );
        assert_eq!(unescape("x\\134y\\012"), "x\\y\n");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn unmounts_a_tmpfs_under_a_dir() {
        let dir = std::env::temp_dir().join(format!("husk-mounts-test-{}", std::process::id()));
        let inner = dir.join("a/b");
        fs::create_dir_all(&inner).unwrap();
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &inner,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = mounted {
            fs::remove_dir_all(&dir).unwrap();
            panic!("mounting a tmpfs needs root, as the whole suite does: {e}");
        }
        assert_eq!(mounts_under(&dir).unwrap(), vec![inner.clone()]);
        unmount_under(&dir).unwrap();
        assert!(mounts_under(&dir).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
