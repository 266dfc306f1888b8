//! A tap device opened by name (in the monitor's network namespace) with a virtio-net header
//! on every frame, so frames move between tap and guest rings without translation.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
const IFNAMSIZ: usize = 16;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
/// `_IOW('T', 202, int)` and `_IOW('T', 216, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Attaches to (or creates) tap interface `name`.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad tap name"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        // struct ifreq: name, then the flags (a short) in the union.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        ifreq[IFNAMSIZ..IFNAMSIZ + 2]
            .copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes), which `ifreq` is, on
        // an fd we own; the return value is checked.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len: libc::c_int = 12;
        const _: () = assert!(VNET_HDR_LEN == 12);
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr_len`.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file })
    }

    /// Wraps an already configured tap (or, in tests, any non-blocking fd pair end).
    pub fn from_file(file: File) -> Self {
        Self { file }
    }

    /// One frame (with its virtio-net header), or `WouldBlock`.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
