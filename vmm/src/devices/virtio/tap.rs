//! The tap of a pod interface, inherited as a descriptor (the shim opened it in the pod's
//! network namespace), with a virtio-net header on every frame, so frames move between tap
//! and guest rings without translation.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
const IFNAMSIZ: usize = 16;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
/// `_IOR('T', 210, unsigned int)` and `_IOW('T', 216, int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Takes over tap descriptor `fd`, inherited from the shim (which opened it in the pod's
    /// network namespace), and makes it carry a 12-byte virtio-net header per frame.
    pub fn from_inherited(fd: RawFd) -> io::Result<Self> {
        // SAFETY: `fd` was handed to this process for this device alone (the launch file
        // says so); nothing else here owns it. If it is not open, the checks below fail.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut ifreq = [0u8; 40];
        // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes) into `ifreq`; it fails on
        // anything but a tun/tap descriptor.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, ifreq.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = u16::from_ne_bytes([ifreq[IFNAMSIZ], ifreq[IFNAMSIZ + 1]]);
        if flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) != IFF_TAP | IFF_NO_PI | IFF_VNET_HDR {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is not a tap with virtio-net headers (flags {flags:#x})"),
            ));
        }
        let hdr_len: libc::c_int = 12;
        const _: () = assert!(VNET_HDR_LEN == 12);
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr_len`.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl on our own descriptor; no memory is touched.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if fl < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
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

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn only_a_tap_with_virtio_net_headers_is_taken() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let err = Tap::from_inherited(a.into_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
        // A real tap, in a network namespace of this test thread's own (needs root, as the
        // suite does).
        let tap = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            let mut ifreq = [0u8; 40];
            ifreq[..4].copy_from_slice(b"t0\0\0");
            ifreq[IFNAMSIZ..IFNAMSIZ + 2]
                .copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
            // SAFETY: TUNSETIFF with a 40-byte ifreq on our own descriptor.
            let rc = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, ifreq.as_mut_ptr()) };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            Tap::from_inherited(tun.into_raw_fd())
        })
        .join()
        .unwrap();
        assert!(tap.is_ok(), "{tap:?}");
    }
}
