//! Reading the kernel release (`uname -r` of the guest) straight from a bzImage: the
//! x86 boot protocol header stores a pointer to the version string
//! (`Documentation/x86/boot.rst`: `kernel_version` at 0x20E, relative to 0x200).

use std::path::{Path, PathBuf};

/// Offset of the `HdrS` magic.
const HDRS_OFFSET: usize = 0x202;
/// Offset of the `kernel_version` field.
const KERNEL_VERSION_FIELD: usize = 0x20E;
/// `kernel_version` is relative to this.
const KERNEL_VERSION_BASE: usize = 0x200;
/// The version string is short; stop looking after this many bytes.
const MAX_VERSION_LEN: usize = 512;

/// Errors reading the release.
#[derive(Debug, thiserror::Error)]
pub enum KernelReleaseError {
    /// The file could not be read.
    #[error("reading kernel image {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not a bzImage with a version string.
    #[error("{0} is not a bzImage with a kernel_version string")]
    NotBzImage(PathBuf),
}

/// The release (first word of the version string, e.g. `6.1.192`) of a bzImage.
pub fn release_of_bzimage(path: &Path) -> Result<String, KernelReleaseError> {
    let image = std::fs::read(path).map_err(|source| KernelReleaseError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_release(&image).ok_or_else(|| KernelReleaseError::NotBzImage(path.to_owned()))
}

fn parse_release(image: &[u8]) -> Option<String> {
    if image.get(HDRS_OFFSET..HDRS_OFFSET + 4)? != b"HdrS" {
        return None;
    }
    let field = image.get(KERNEL_VERSION_FIELD..KERNEL_VERSION_FIELD + 2)?;
    let ptr = usize::from(u16::from_le_bytes([field[0], field[1]]));
    if ptr == 0 {
        return None;
    }
    let start = KERNEL_VERSION_BASE + ptr;
    let bytes = image.get(start..(start + MAX_VERSION_LEN).min(image.len()))?;
    let end = bytes.iter().position(|b| *b == 0)?;
    let version = std::str::from_utf8(&bytes[..end]).ok()?;
    version.split_whitespace().next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_boot_header_version() {
        let mut img = vec![0u8; 0x1000];
        img[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        img[KERNEL_VERSION_FIELD..KERNEL_VERSION_FIELD + 2]
            .copy_from_slice(&0x300u16.to_le_bytes());
        let v = b"6.1.192 (root@host) #1 SMP PREEMPT_DYNAMIC\0";
        img[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(parse_release(&img).as_deref(), Some("6.1.192"));
    }

    #[test]
    fn rejects_other_files() {
        assert_eq!(parse_release(b"not a kernel"), None);
        let mut img = vec![0u8; 0x400];
        img[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        assert_eq!(parse_release(&img), None, "null kernel_version");
    }
}
