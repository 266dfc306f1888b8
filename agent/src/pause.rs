//! The pod's namespace holder when containerd 2.x's Sandbox API runs the pod: no pause
//! image exists then, so the shim has the agent's own binary (bind-mounted read-only into
//! an empty rootfs) run as the pod's first container with [`PAUSE_ARG`]. It keeps the pod's
//! IPC, UTS and PID namespaces alive, reaps what is reparented to it as PID 1 of the pod's
//! PID namespace, and exits on SIGTERM or SIGINT — what the pause image does.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

pub use husk_protocol::PAUSE_ARG;

/// Waits for signals until told to stop; returns the exit status.
pub fn run() -> i32 {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    if signals.thread_block().is_err() {
        return 1;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(_) => return 0,
            Err(_) => return 1,
        }
    }
}

/// Collects every exited child, without blocking.
fn reap_all() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
