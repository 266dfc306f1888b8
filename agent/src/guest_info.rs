//! Facts about the guest reported by `Check`: kernel release and uptime.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GuestInfoError {
    #[error("reading CLOCK_BOOTTIME: {0}")]
    Clock(#[source] nix::Error),
}

/// Time since the guest kernel booted (includes time suspended, like `/proc/uptime`).
pub fn uptime() -> Result<Duration, GuestInfoError> {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(GuestInfoError::Clock)?;
    Ok(Duration::from(ts))
}

/// [`uptime`] in whole milliseconds.
pub fn uptime_ms() -> Result<u64, GuestInfoError> {
    Ok(u64::try_from(uptime()?.as_millis()).unwrap_or(u64::MAX))
}

/// [`uptime`] in whole microseconds.
pub fn uptime_us() -> Result<u64, GuestInfoError> {
    Ok(u64::try_from(uptime()?.as_micros()).unwrap_or(u64::MAX))
}

/// When the agent's boot milestones happened, in guest uptime.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    /// The kernel ran `/init`.
    pub init_us: u64,
    /// The agent began serving.
    pub serving_ms: u64,
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_uptime_and_release() {
        assert!(uptime().unwrap() > Duration::ZERO);
        assert!(!kernel_release().is_empty());
    }
}
