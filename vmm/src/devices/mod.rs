//! Emulated devices. No KVM knowledge here: devices see bus accesses (offset + bytes) and raise
//! interrupts by writing an `EventFd` (which `device_manager` binds to a KVM irqfd).

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub use bus::{Bus, BusDevice, BusError};
use vmm_sys_util::eventfd::EventFd;

/// How the VM ended; the monitor's exit status follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReason {
    pub code: i32,
    pub description: String,
}

/// Asks the monitor to end the VM: written by the i8042 (reset), vCPU threads (shutdown,
/// failures) and the event loop. The first request wins; the event loop waits on the fd.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    requested: AtomicBool,
    code: AtomicI32,
    description: Mutex<String>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            requested: AtomicBool::new(false),
            code: AtomicI32::new(0),
            description: Mutex::new(String::new()),
        })
    }

    /// Records the first reason and wakes the event loop.
    pub fn request(&self, code: i32, description: impl Into<String>) {
        if self
            .requested
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.code.store(code, Ordering::Release);
            if let Ok(mut d) = self.description.lock() {
                *d = description.into();
            }
        }
        // A full counter (impossible in practice) still leaves the fd readable.
        let _ = self.evt.write(1);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.is_requested().then(|| ExitReason {
            code: self.code.load(Ordering::Acquire),
            description: self
                .description
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default(),
        })
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_request_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(s.reason().is_none());
        s.request(0, "guest reset");
        s.request(3, "later failure");
        assert_eq!(
            s.reason(),
            Some(ExitReason {
                code: 0,
                description: "guest reset".into()
            })
        );
        assert!(s.event_fd().read().unwrap() >= 1);
    }
}
