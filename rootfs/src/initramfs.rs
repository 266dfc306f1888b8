//! The guest initramfs layout: `husk-agent` as `/init` plus the few directories and the
//! console node the kernel and the agent need before anything is mounted.
//!
//! `/dev/console` must exist in the initramfs itself: the kernel opens it for PID 1's
//! stdio *before* `/init` runs (and before devtmpfs could be mounted by init), so without
//! it the agent starts with no stdin/stdout/stderr and early errors are lost.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::newc::{NewcError, NewcWriter};

/// Major/minor of `/dev/console` (`Documentation/admin-guide/devices.txt`).
const CONSOLE_DEV: (u32, u32) = (5, 1);

/// Errors from building or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// An entry could not be encoded.
    #[error(transparent)]
    Newc(#[from] NewcError),
    /// Creating, writing or renaming the output file failed.
    #[error("writing initramfs {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with permission bits `perm`.
    Directory {
        /// Path inside the guest, e.g. `/dev`.
        path: String,
        /// Permission bits.
        perm: u32,
    },
    /// A regular file.
    File {
        /// Path inside the guest.
        path: String,
        /// Permission bits.
        perm: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A character device node.
    CharDevice {
        /// Path inside the guest.
        path: String,
        /// Permission bits.
        perm: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the guest.
        path: String,
        /// Link target.
        target: String,
    },
}

/// An ordered list of entries (parents before children) that becomes a newc archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// What every husk guest needs before `/init` runs: mount points for `/dev`,
    /// `/proc`, `/sys`, `/run`, `/tmp`, and the `/dev/console` node (5,1).
    pub fn skeleton() -> Self {
        let dir = |path: &str, perm| Entry::Directory {
            path: path.to_owned(),
            perm,
        };
        Self {
            entries: vec![
                dir("/dev", 0o755),
                Entry::CharDevice {
                    path: "/dev/console".to_owned(),
                    perm: 0o600,
                    major: CONSOLE_DEV.0,
                    minor: CONSOLE_DEV.1,
                },
                dir("/proc", 0o555),
                dir("/sys", 0o555),
                dir("/run", 0o755),
                dir("/tmp", 0o1777),
            ],
        }
    }

    /// The standard husk initramfs: [`Initramfs::skeleton`] plus `init` (the agent
    /// binary) as `/init`, mode 0755.
    pub fn with_init(init: Vec<u8>) -> Self {
        Self::skeleton().with(Entry::File {
            path: "/init".to_owned(),
            perm: 0o755,
            data: init,
        })
    }

    /// Appends an entry (builder style).
    #[must_use]
    pub fn with(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// The entries in archive order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Writes the archive to `out` and returns it.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, InitramfsError> {
        let mut w = NewcWriter::new(out);
        for entry in &self.entries {
            match entry {
                Entry::Directory { path, perm } => w.directory(path, *perm)?,
                Entry::File { path, perm, data } => w.file(path, *perm, data)?,
                Entry::CharDevice {
                    path,
                    perm,
                    major,
                    minor,
                } => w.char_device(path, *perm, *major, *minor)?,
                Entry::Symlink { path, target } => w.symlink(path, target)?,
            }
        }
        Ok(w.finish()?)
    }

    /// Writes the archive to `path` atomically: into a temporary file beside it, then
    /// renamed over `path`, so readers never see a partial image.
    pub fn write_file(&self, path: &Path) -> Result<(), InitramfsError> {
        let io_err = |source| InitramfsError::Io {
            path: path.to_owned(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "initramfs".to_owned());
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
        let result = (|| {
            let file = File::create(&tmp).map_err(io_err)?;
            let mut out = self.write_to(BufWriter::new(file))?;
            out.flush().map_err(io_err)?;
            let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
            fs::rename(&tmp, path).map_err(io_err)
        })();
        if result.is_err() {
            // Best effort: do not leave the partial temporary file behind.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skeleton_has_console_and_mount_points_before_init() {
        let fs = Initramfs::with_init(b"\x7fELF".to_vec());
        let paths: Vec<&str> = fs
            .entries()
            .iter()
            .map(|e| match e {
                Entry::Directory { path, .. }
                | Entry::File { path, .. }
                | Entry::CharDevice { path, .. }
                | Entry::Symlink { path, .. } => path.as_str(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "/dev",
                "/dev/console",
                "/proc",
                "/sys",
                "/run",
                "/tmp",
                "/init"
            ]
        );
        assert!(fs.entries().contains(&Entry::CharDevice {
            path: "/dev/console".into(),
            perm: 0o600,
            major: 5,
            minor: 1
        }));
    }

    #[test]
    fn archive_contains_init_with_mode_0755() {
        let bytes = Initramfs::with_init(b"agent".to_vec())
            .write_to(Vec::new())
            .unwrap();
        // Find the "init\0" name and check the mode field of its header.
        let pos = bytes.windows(5).position(|w| w == b"init\0").unwrap();
        let header = &bytes[pos - crate::newc::HEADER_LEN..pos];
        assert_eq!(&header[14..22], b"000081ED");
        assert_eq!(bytes.len() % 512, 0);
    }

    #[test]
    fn write_file_is_atomic_and_complete() {
        let dir = std::env::temp_dir().join(format!("husk-rootfs-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("initrd.img");
        let fs_ = Initramfs::with_init(vec![1, 2, 3]);
        fs_.write_file(&out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs_.write_to(Vec::new()).unwrap());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "initrd.img")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
