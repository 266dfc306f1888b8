//! The tap that carries a pod interface's frames to and from the VM, opened by the shim in
//! the pod's namespace and handed to the VMM as a descriptor: the monitor's jail needs no
//! `/dev/net/tun` and no network namespace of the host, and the tap (not persistent) is gone
//! once the last descriptor closes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: Ethernet frames, each behind a virtio-net header,
/// as virtio-net (husk-vmm's and QEMU's) moves them.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// `struct virtio_net_hdr_v1`: VERSION_1 devices always carry `num_buffers`.
const VNET_HDR_LEN: libc::c_int = 12;

/// The name of the tap for the pod's `index`-th interface.
pub fn name(index: usize) -> String {
    format!("tap{index}_husk")
}

/// Creates tap `name` and returns its descriptor. Runs in the pod's namespace (on the thread
/// that joined it). Fails if an interface of that name exists.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain data; all zeroes is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // IFF_TUN_EXCL: an existing interface of that name is an error, never attached to.
    // The flags are a 16-bit mask (IFF_TUN_EXCL is its top bit): carried bit for bit.
    let flags = u16::try_from(TAP_FLAGS | libc::IFF_TUN_EXCL)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "tap flags beyond 16 bits"))?;
    ifreq.ifr_ifru.ifru_flags = libc::c_short::from_ne_bytes(flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `ifreq` is; the descriptor
    // is ours and the result is checked.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifreq) })?;
    let header: libc::c_int = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `header`.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header) })?;
    // The guest receives no offloaded (unchecksummed, unsegmented) frames: the devices
    // negotiate no receive offloads. TUNSETOFFLOAD takes its argument by value.
    // SAFETY: plain integer argument on our descriptor.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) })?;
    Ok(tun.into())
}

/// Keeps the namespace's own IPv6 stack off the tap (it would send router and multicast
/// listener solicitations into the guest). Runs in the pod's namespace.
pub fn disable_ipv6(name: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        // No IPv6 in this kernel: nothing to keep off.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
