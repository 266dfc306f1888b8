//! A streaming writer for the newc ("new ASCII", magic `070701`) cpio format, the format
//! the Linux kernel unpacks as an initramfs (`Documentation/driver-api/early-userspace/
//! buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (magic + 13 fields of 8 hex digits), the
//! NUL-terminated name padded so that header + name is a multiple of 4 bytes, then the
//! data padded to a multiple of 4. The archive ends with an entry named `TRAILER!!!`;
//! we then pad the whole archive to 512 bytes like GNU cpio does (the kernel does not
//! need it, other tools expect it).
//!
//! Timestamps, owners and inode numbers are deterministic (mtime 0, uid/gid 0, inodes
//! counted from 1), so the same input always produces the same bytes.
//!
//! Kept in-house: the format is a page of rules, and husk needs its output to be
//! byte-for-byte deterministic (it is part of a cached, reproducible build); a general cpio
//! crate would have to be bent to the same fixed metadata and checked for it anyway.

use std::io::{self, Write};

/// The newc magic.
const MAGIC: &[u8; 6] = b"070701";
/// Bytes in an entry header: the magic plus 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 6 + 13 * 8;
/// The name of the entry that ends an archive.
pub const TRAILER_NAME: &str = "TRAILER!!!";
/// GNU cpio pads archives to this block size.
const BLOCK: usize = 512;
/// Longest path we accept (Linux `PATH_MAX`).
const MAX_PATH: usize = 4096;

/// `st_mode` file type bits.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;
/// Permission bits (incl. setuid/setgid/sticky) a caller may pass.
const PERM_MASK: u32 = 0o7777;

/// Errors from [`NewcWriter`].
#[derive(Debug, thiserror::Error)]
pub enum NewcError {
    /// Writing to the underlying sink failed.
    #[error("writing the cpio archive failed: {0}")]
    Io(#[from] io::Error),
    /// The entry name cannot be represented or would escape the archive root.
    #[error("invalid cpio entry path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Permission bits outside `0o7777`.
    #[error("invalid permission bits {mode:#o} for cpio entry {path:?} (allowed: 0o0000..=0o7777)")]
    InvalidMode {
        /// The entry.
        path: String,
        /// The rejected mode.
        mode: u32,
    },
    /// newc stores sizes in 32 bits.
    #[error("cpio entry {path:?} is {len} bytes; newc entries are limited to 4 GiB")]
    TooLarge {
        /// The entry.
        path: String,
        /// Its size in bytes.
        len: usize,
    },
}

/// The fields of one newc header that vary between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Writes a newc archive entry by entry; call [`NewcWriter::finish`] to write the trailer.
pub struct NewcWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// Adds a directory. Parents must have been added before their children.
    pub fn directory(&mut self, path: &str, perm: u32) -> Result<(), NewcError> {
        let name = entry_name(path)?;
        let mode = file_mode(name, S_IFDIR, perm)?;
        self.entry(
            &Header {
                name,
                mode,
                nlink: 2,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            },
            &[],
        )
    }

    /// Adds a regular file with `data` as contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), NewcError> {
        let name = entry_name(path)?;
        let mode = file_mode(name, S_IFREG, perm)?;
        let filesize = size_u32(name, data.len())?;
        self.entry(
            &Header {
                name,
                mode,
                nlink: 1,
                filesize,
                rdev_major: 0,
                rdev_minor: 0,
            },
            data,
        )
    }

    /// Adds a character device node `major:minor`.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), NewcError> {
        let name = entry_name(path)?;
        let mode = file_mode(name, S_IFCHR, perm)?;
        self.entry(
            &Header {
                name,
                mode,
                nlink: 1,
                filesize: 0,
                rdev_major: major,
                rdev_minor: minor,
            },
            &[],
        )
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), NewcError> {
        let name = entry_name(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(NewcError::InvalidPath {
                path: path.to_owned(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        let filesize = size_u32(name, target.len())?;
        self.entry(
            &Header {
                name,
                mode: S_IFLNK | 0o777,
                nlink: 1,
                filesize,
                rdev_major: 0,
                rdev_minor: 0,
            },
            target.as_bytes(),
        )
    }

    /// Writes the trailer, pads the archive to 512 bytes and returns the sink.
    pub fn finish(mut self) -> Result<W, NewcError> {
        self.write_header(
            0,
            &Header {
                name: TRAILER_NAME,
                mode: 0,
                nlink: 1,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            },
        )?;
        let rem = usize::try_from(self.offset % BLOCK as u64).unwrap_or(0);
        if rem != 0 {
            self.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, header: &Header<'_>, data: &[u8]) -> Result<(), NewcError> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.write_header(ino, header)?;
        self.write_all(data)?;
        self.pad4()
    }

    fn write_header(&mut self, ino: u32, h: &Header<'_>) -> Result<(), NewcError> {
        // namesize counts the terminating NUL.
        let namesize = size_u32(h.name, h.name.len() + 1)?;
        let fields: [u32; 13] = [
            ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            h.filesize,
            0, // devmajor
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            namesize,
            0, // check (only used by the "070702" crc variant)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + h.name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(h.name.as_bytes());
        header.push(0);
        self.write_all(&header)?;
        self.pad4()
    }

    fn pad4(&mut self) -> Result<(), NewcError> {
        let pad = usize::try_from((4 - self.offset % 4) % 4).unwrap_or(0);
        self.write_all(&[0u8; 3][..pad])
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), NewcError> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Normalises `path` to the archive-relative form the kernel expects (`dev/console`)
/// and rejects paths that could escape the root or cannot be stored.
fn entry_name(path: &str) -> Result<&str, NewcError> {
    let invalid = |reason| NewcError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let name = path.trim_start_matches('/');
    if name.is_empty() {
        return Err(invalid("empty path (the archive root needs no entry)"));
    }
    if name.len() > MAX_PATH {
        return Err(invalid("longer than PATH_MAX"));
    }
    if name.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if name == TRAILER_NAME {
        return Err(invalid("reserved for the archive trailer"));
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid("empty, `.` or `..` path component"));
    }
    Ok(name)
}

fn file_mode(name: &str, kind: u32, perm: u32) -> Result<u32, NewcError> {
    if perm & !PERM_MASK != 0 {
        return Err(NewcError::InvalidMode {
            path: name.to_owned(),
            mode: perm,
        });
    }
    Ok(kind | perm)
}

fn size_u32(name: &str, len: usize) -> Result<u32, NewcError> {
    u32::try_from(len).map_err(|_| NewcError::TooLarge {
        path: name.to_owned(),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry of an archive (test-side reader, written independently of the writer).
    #[derive(Debug, PartialEq)]
    struct Parsed {
        fields: [u32; 13],
        name: String,
        data: Vec<u8>,
        header_offset: usize,
    }

    fn hex_field(buf: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(buf).unwrap(), 16).unwrap()
    }

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    fn parse(archive: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "entry at {pos} is not 4-byte aligned");
            assert_eq!(&archive[pos..pos + 6], MAGIC);
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let start = pos + 6 + i * 8;
                *f = hex_field(&archive[start..start + 8]);
            }
            let namesize = fields[11] as usize;
            let name_start = pos + HEADER_LEN;
            let name_bytes = &archive[name_start..name_start + namesize];
            assert_eq!(*name_bytes.last().unwrap(), 0, "name is NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = align4(name_start + namesize);
            let size = fields[6] as usize;
            let data = archive[data_start..data_start + size].to_vec();
            let next = align4(data_start + size);
            let done = name == TRAILER_NAME;
            out.push(Parsed {
                fields,
                name,
                data,
                header_offset: pos,
            });
            if done {
                assert!(archive[next..].iter().all(|b| *b == 0), "padding is zeros");
                return out;
            }
            pos = next;
        }
    }

    fn build(f: impl FnOnce(&mut NewcWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = NewcWriter::new(Vec::new());
        f(&mut w);
        w.finish().unwrap()
    }

    #[test]
    fn header_layout_matches_the_kernel_format() {
        let archive = build(|w| w.file("/init", 0o755, b"hello").unwrap());
        // magic, then 13 8-digit fields, then the name.
        assert_eq!(&archive[..6], b"070701");
        let header = std::str::from_utf8(&archive[..HEADER_LEN]).unwrap();
        assert_eq!(
            header,
            concat!(
                "070701", "00000001", "000081ED", "00000000", "00000000", "00000001", "00000000",
                "00000005", "00000000", "00000000", "00000000", "00000000", "00000005", "00000000"
            )
        );
        // "init\0" fills 110 + 5 = 115 -> padded to 116, then the data.
        assert_eq!(&archive[HEADER_LEN..HEADER_LEN + 5], b"init\0");
        assert_eq!(archive[115], 0);
        assert_eq!(&archive[116..121], b"hello");
    }

    #[test]
    fn names_and_data_are_padded_to_four_bytes() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xAB; data_len];
                let archive = build(|w| w.file(&name, 0o644, &data).unwrap());
                let entries = parse(&archive);
                assert_eq!(entries.len(), 2);
                assert_eq!(entries[0].name, name);
                assert_eq!(entries[0].data, data);
                assert_eq!(entries[1].header_offset % 4, 0);
            }
        }
    }

    #[test]
    fn trailer_ends_the_archive_and_pads_to_512() {
        let archive = build(|w| {
            w.directory("dev", 0o755).unwrap();
            w.char_device("dev/console", 0o600, 5, 1).unwrap();
        });
        assert_eq!(archive.len() % 512, 0);
        let entries = parse(&archive);
        let trailer = entries.last().unwrap();
        assert_eq!(trailer.name, TRAILER_NAME);
        assert_eq!(trailer.fields[0], 0, "trailer inode");
        assert_eq!(trailer.fields[4], 1, "trailer nlink");
        assert_eq!(trailer.fields[6], 0, "trailer size");
    }

    #[test]
    fn entry_kinds_and_device_numbers() {
        let archive = build(|w| {
            w.directory("/dev", 0o755).unwrap();
            w.char_device("/dev/console", 0o600, 5, 1).unwrap();
            w.symlink("sh", "busybox").unwrap();
        });
        let e = parse(&archive);
        assert_eq!(e[0].name, "dev");
        assert_eq!(e[0].fields[1], 0o040_755);
        assert_eq!(e[0].fields[4], 2);
        assert_eq!(e[1].name, "dev/console");
        assert_eq!(e[1].fields[1], 0o020_600);
        assert_eq!((e[1].fields[9], e[1].fields[10]), (5, 1));
        assert_eq!(e[2].fields[1], 0o120_777);
        assert_eq!(e[2].data, b"busybox");
        // Inode numbers are unique and deterministic.
        assert_eq!(
            e.iter().map(|p| p.fields[0]).collect::<Vec<_>>(),
            [1, 2, 3, 0]
        );
    }

    #[test]
    fn output_is_deterministic() {
        let make = || build(|w| w.file("a", 0o644, b"x").unwrap());
        assert_eq!(make(), make());
    }

    #[test]
    fn rejects_bad_paths_and_modes() {
        let mut w = NewcWriter::new(Vec::new());
        for bad in ["", "/", "a/../b", "./a", "a//b", "a\0b", TRAILER_NAME] {
            assert!(
                matches!(w.directory(bad, 0o755), Err(NewcError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            w.file("x", 0o100_644, b""),
            Err(NewcError::InvalidMode { .. })
        ));
        assert!(matches!(
            w.symlink("x", ""),
            Err(NewcError::InvalidPath { .. })
        ));
    }
}
