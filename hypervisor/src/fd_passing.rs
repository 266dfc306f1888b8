//! Handing a listening socket to a child process as fd 3 (the convention of containerd
//! shims and of `virtiofsd --fd=3`).

use std::os::fd::RawFd;

/// The descriptor number children receive their inherited socket on.
pub const INHERITED_FD: RawFd = 3;

/// Makes `fd` available as [`INHERITED_FD`] across exec. Call only between fork and exec
/// (e.g. from `pre_exec`): it uses nothing but async-signal-safe syscalls.
pub fn inherit_as_fd3(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2/fcntl on descriptors the (forked) caller owns; no memory is touched.
    let ok = unsafe {
        if fd == INHERITED_FD {
            // dup2 onto itself would keep close-on-exec set.
            libc::fcntl(fd, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(fd, INHERITED_FD) == INHERITED_FD
        }
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
