//! Shell-style exit statuses from raw `waitpid` statuses.
//!
//! Decoded with libc's macros rather than nix's `WaitStatus`, which rejects real-time signal
//! numbers: a process killed by `SIGRTMIN+n` must still be reported (as 128 + n').

use std::ffi::c_int;

/// Base added to a signal number, as shells do.
pub const SIGNAL_EXIT_BASE: i32 = 128;

/// The shell-style status of a terminated process (`code`, or 128 + signal), or `None` when the
/// raw status does not describe a termination (stopped or continued).
pub fn from_wait_status(raw: c_int) -> Option<i32> {
    if libc::WIFEXITED(raw) {
        Some(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        Some(SIGNAL_EXIT_BASE + libc::WTERMSIG(raw))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Raw statuses as the kernel encodes them (see wait(2)).
    fn exited(code: c_int) -> c_int {
        (code & 0xff) << 8
    }
    fn signaled(sig: c_int) -> c_int {
        sig & 0x7f
    }

    #[test]
    fn decodes_exit_codes_and_signals() {
        assert_eq!(from_wait_status(exited(0)), Some(0));
        assert_eq!(from_wait_status(exited(7)), Some(7));
        assert_eq!(from_wait_status(exited(255)), Some(255));
        assert_eq!(from_wait_status(signaled(libc::SIGKILL)), Some(137));
        assert_eq!(from_wait_status(signaled(libc::SIGTERM) | 0x80), Some(143)); // core dumped
        assert_eq!(
            from_wait_status(signaled(libc::SIGRTMIN() + 2)),
            Some(128 + libc::SIGRTMIN() + 2)
        );
    }

    #[test]
    fn ignores_stop_and_continue() {
        assert_eq!(from_wait_status((libc::SIGSTOP << 8) | 0x7f), None);
        assert_eq!(from_wait_status(0xffff), None);
    }
}
