//! Handing descriptors to a child process from fd 3 on (the convention of containerd shims
//! and of `virtiofsd --fd=3`): a pre-bound listener, or a pod's taps.

use std::os::fd::RawFd;

/// The descriptor number children receive their (first) inherited descriptor on.
pub const INHERITED_FD: RawFd = 3;

/// Makes `fd` available as [`INHERITED_FD`] across exec. Call only between fork and exec
/// (e.g. from `pre_exec`): it uses nothing but async-signal-safe syscalls.
pub fn inherit_as_fd3(fd: RawFd) -> std::io::Result<()> {
    inherit_from_fd3(&[fd])
}

/// Makes `fds` available as descriptors 3, 4, … in order, across exec. Call only between
/// fork and exec: async-signal-safe syscalls only, no allocation.
pub fn inherit_from_fd3(fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() > MAX_INHERITED {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    let count = RawFd::try_from(fds.len()).unwrap_or(RawFd::MAX);
    let above = INHERITED_FD.saturating_add(count);
    // First every source moves above the target range, so that no dup2 below can close a
    // source that happens to sit on a target number.
    let mut moved: [RawFd; MAX_INHERITED] = [0; MAX_INHERITED];
    for (slot, &fd) in moved.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor the (forked) caller owns; no memory is touched.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = copy;
    }
    for (target, &copy) in (INHERITED_FD..).zip(&moved[..fds.len()]) {
        // SAFETY: dup2 between descriptors this process owns; the target loses close-on-exec.
        if unsafe { libc::dup2(copy, target) } != target {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Most descriptors one child inherits (a listener, or a pod's taps).
pub const MAX_INHERITED: usize = 16;
