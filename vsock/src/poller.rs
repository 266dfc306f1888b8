//! The device's own readiness set for host-side sockets, plus a tick timer for deadlines.
//!
//! Its fd is nested into whatever event loop drives the device (the vhost-user worker's
//! epoll, or the built-in VMM's), which calls back when any host socket is ready. Level
//! triggered: interest is kept equal to what a connection needs right now.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Token of the tick timer; callers use other values for their sockets.
pub const TIMER_TOKEN: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    #[error("cannot create epoll: {0}")]
    Epoll(io::Error),
    #[error("cannot create the deadline timer: {0}")]
    Timer(nix::Error),
    #[error("cannot register the deadline timer: {0}")]
    RegisterTimer(io::Error),
}

#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
    timer: TimerFd,
    tick: Duration,
    ticking: bool,
}

impl Poller {
    /// `tick`: period of the deadline timer while it runs.
    pub fn new(tick: Duration) -> Result<Self, PollerError> {
        let epoll = Epoll::new().map_err(PollerError::Epoll)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(PollerError::Timer)?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_fd().as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER_TOKEN),
            )
            .map_err(PollerError::RegisterTimer)?;
        Ok(Self {
            epoll,
            timer,
            tick,
            ticking: false,
        })
    }

    /// Moves `fd` from interest `old` to `new` (empty means not registered).
    pub fn update(&self, fd: RawFd, token: u64, old: EventSet, new: EventSet) -> io::Result<()> {
        let op = match (old.is_empty(), new.is_empty()) {
            (true, true) => return Ok(()),
            (true, false) => ControlOperation::Add,
            (false, true) => ControlOperation::Delete,
            (false, false) if old == new => return Ok(()),
            (false, false) => ControlOperation::Modify,
        };
        self.epoll.ctl(op, fd, EpollEvent::new(new, token))
    }

    /// Ready events, without waiting.
    pub fn poll(&self, events: &mut [EpollEvent]) -> io::Result<usize> {
        loop {
            match self.epoll.wait(0, events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Starts the periodic tick if it is not running.
    pub fn start_ticking(&mut self) -> Result<(), nix::Error> {
        if !self.ticking {
            let tick = TimeSpec::from_duration(self.tick);
            self.timer
                .set(Expiration::Interval(tick), TimerSetTimeFlags::empty())?;
            self.ticking = true;
        }
        Ok(())
    }

    pub fn stop_ticking(&mut self) -> Result<(), nix::Error> {
        if self.ticking {
            self.timer.unset()?;
            self.ticking = false;
        }
        Ok(())
    }

    /// Clears the timer's readiness (non-blocking: a spurious call is harmless).
    pub fn consume_tick(&self) {
        let mut expirations = [0u8; 8];
        let _ = nix::unistd::read(self.timer.as_fd().as_raw_fd(), &mut expirations);
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}
