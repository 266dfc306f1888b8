//! PID 1's reaper: the only place in the agent that calls `waitpid`.
//!
//! Every process in the guest ends up as our child or grandchild: the helpers we spawn, the
//! container processes they leave behind (reparented to PID 1 when the helper exits), and any
//! orphan in a container. One task wakes on SIGCHLD, reaps with `waitpid(-1, WNOHANG)` until
//! nothing is left, and hands each exit status to the waiter registered for that pid.
//!
//! A process can exit before anyone registers its pid (a container process reported by a
//! helper can die before the helper's reply arrives), so exits of unregistered pids are kept
//! in a bounded map, oldest evicted first, and handed out on registration. Orphans that nobody
//! ever registers only ever occupy that bounded map.
//!
//! Nothing else may reap: the agent never uses `tokio::process` or `std::process::Child::wait`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use slog::{Logger, debug, trace, warn};
use thiserror::Error;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::exit_status;

/// Exits of pids nobody has registered yet that we remember; orphans beyond this are dropped
/// oldest first.
pub const UNCLAIMED_EXITS_CAPACITY: usize = 1024;

/// Resolves to `Some(shell-style status)` once the process has exited.
pub type ExitReceiver = watch::Receiver<Option<i32>>;

#[derive(Debug, Error)]
pub enum ReaperError {
    #[error("installing the SIGCHLD handler: {0}")]
    SignalHandler(#[source] std::io::Error),
    #[error("sending signal {signal} to pid {pid}: {source}")]
    Kill {
        pid: i32,
        signal: c_int,
        source: Errno,
    },
}

/// Exit statuses of reaped processes, by pid.
pub struct ExitRegistry {
    table: Mutex<ExitTable>,
}

struct ExitTable {
    waiters: HashMap<i32, watch::Sender<Option<i32>>>,
    unclaimed: UnclaimedExits,
}

impl Default for ExitRegistry {
    fn default() -> Self {
        Self::with_capacity(UNCLAIMED_EXITS_CAPACITY)
    }
}

impl ExitRegistry {
    pub fn with_capacity(unclaimed_capacity: usize) -> Self {
        let table = ExitTable {
            waiters: HashMap::new(),
            unclaimed: UnclaimedExits::new(unclaimed_capacity),
        };
        Self {
            table: Mutex::new(table),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ExitTable> {
        // The table stays consistent even if a holder panicked: every update is one map call.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `pid`; if it already exited, the receiver holds its status already.
    pub fn register(&self, pid: i32) -> ExitReceiver {
        let mut table = self.lock();
        let status = table.unclaimed.take(pid);
        let (tx, rx) = watch::channel(status);
        if status.is_none() {
            table.waiters.insert(pid, tx);
        }
        rx
    }

    /// Hands `status` to the waiter of `pid`, or keeps it for a later `register`.
    pub fn record_exit(&self, pid: i32, status: i32) {
        Self::dispatch(&mut self.lock(), pid, status);
    }

    fn dispatch(table: &mut ExitTable, pid: i32, status: i32) -> bool {
        match table.waiters.remove(&pid) {
            Some(tx) => {
                // No receiver left means nobody cares any more; that is fine.
                let _ = tx.send(Some(status));
                true
            }
            None => {
                table.unclaimed.insert(pid, status);
                false
            }
        }
    }

    /// Reaps every child that has terminated; returns (pid, status, was registered).
    pub fn reap_all(&self) -> Vec<(i32, i32, bool)> {
        let mut reaped = Vec::new();
        // Holding the lock while reaping makes `signal_if_running` race-free: a pid cannot be
        // reaped (and reused) between its check and its kill.
        let mut table = self.lock();
        loop {
            let mut raw: c_int = 0;
            // SAFETY: waitpid only writes the status into `raw`, a valid c_int we own.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                // 0: children remain but none has exited; -1: ECHILD (none left) or EINTR,
                // after which the next SIGCHLD brings us back.
                break;
            }
            if let Some(status) = exit_status::from_wait_status(raw) {
                let registered = Self::dispatch(&mut table, pid, status);
                reaped.push((pid, status, registered));
            }
        }
        reaped
    }

    /// Sends `signal` to `pid` unless it has already exited (then it is a no-op: the pid may
    /// belong to someone else by now). Returns whether the signal was sent.
    pub fn signal_if_running(
        &self,
        pid: i32,
        exit: &ExitReceiver,
        signal: c_int,
    ) -> Result<bool, ReaperError> {
        let sent = self.if_running(exit, || {
            // SAFETY: kill has no memory-safety preconditions; pid > 0 targets one process.
            match unsafe { libc::kill(pid, signal) } {
                0 => Ok(true),
                _ => match Errno::last() {
                    Errno::ESRCH => Ok(false),
                    source => Err(ReaperError::Kill {
                        pid,
                        signal,
                        source,
                    }),
                },
            }
        });
        sent.unwrap_or(Ok(false))
    }

    /// Runs `act` on the process `exit` watches unless it has already exited (then `None`):
    /// its pid cannot be reaped, and so not reused, while `act` runs.
    pub fn if_running<R>(&self, exit: &ExitReceiver, act: impl FnOnce() -> R) -> Option<R> {
        let _table = self.lock();
        if exit.borrow().is_some() {
            return None;
        }
        Some(act())
    }
}

/// The SIGCHLD-driven reaping loop.
pub struct Reaper {
    registry: Arc<ExitRegistry>,
    sigchld: Signal,
    log: Logger,
}

impl Reaper {
    /// Installs the SIGCHLD handler; do this before spawning any child. Needs a tokio runtime.
    pub fn install(registry: Arc<ExitRegistry>, log: Logger) -> Result<Self, ReaperError> {
        let sigchld = signal(SignalKind::child()).map_err(ReaperError::SignalHandler)?;
        Ok(Self {
            registry,
            sigchld,
            log,
        })
    }

    /// Reaps forever.
    pub async fn run(mut self) {
        loop {
            for (pid, status, registered) in self.registry.reap_all() {
                if registered {
                    debug!(self.log, "process exited"; "pid" => pid, "status" => status);
                } else {
                    trace!(self.log, "unregistered process exited"; "pid" => pid, "status" => status);
                }
            }
            if self.sigchld.recv().await.is_none() {
                warn!(self.log, "SIGCHLD stream ended; reaping stops");
                return;
            }
        }
    }
}

/// Exit statuses of pids not (yet) registered, bounded, oldest evicted first.
struct UnclaimedExits {
    by_pid: HashMap<i32, (u64, i32)>,
    by_age: BTreeMap<u64, i32>,
    next_seq: u64,
    capacity: usize,
}

impl UnclaimedExits {
    fn new(capacity: usize) -> Self {
        Self {
            by_pid: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            capacity,
        }
    }

    fn insert(&mut self, pid: i32, status: i32) {
        if self.capacity == 0 {
            return;
        }
        if let Some((old_seq, _)) = self.by_pid.remove(&pid) {
            self.by_age.remove(&old_seq);
        }
        while self.by_pid.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_pid.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_pid.insert(pid, (seq, status));
        self.by_age.insert(seq, pid);
    }

    fn take(&mut self, pid: i32) -> Option<i32> {
        let (seq, status) = self.by_pid.remove(&pid)?;
        self.by_age.remove(&seq);
        Some(status)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.by_pid.len(), self.by_age.len());
        self.by_pid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_registration_is_kept() {
        let registry = ExitRegistry::default();
        registry.record_exit(42, 7);
        let rx = registry.register(42);
        assert_eq!(*rx.borrow(), Some(7));
        // Handed out once: a later process with the same pid starts unexited.
        assert_eq!(*registry.register(42).borrow(), None);
    }

    #[test]
    fn exit_after_registration_reaches_waiter() {
        let registry = ExitRegistry::default();
        let rx = registry.register(10);
        assert_eq!(*rx.borrow(), None);
        registry.record_exit(10, 137);
        assert_eq!(*rx.borrow(), Some(137));
        assert_eq!(registry.lock().unclaimed.len(), 0);
        assert!(registry.lock().waiters.is_empty());
    }

    #[test]
    fn unclaimed_map_is_bounded_and_evicts_oldest() {
        let mut exits = UnclaimedExits::new(3);
        for pid in 1..=5 {
            exits.insert(pid, pid * 10);
        }
        assert_eq!(exits.len(), 3);
        assert_eq!(exits.take(1), None);
        assert_eq!(exits.take(2), None);
        assert_eq!(exits.take(3), Some(30));
        assert_eq!(exits.take(5), Some(50));
        assert_eq!(exits.len(), 1);
    }

    #[test]
    fn reinserting_a_pid_refreshes_it() {
        let mut exits = UnclaimedExits::new(2);
        exits.insert(1, 1);
        exits.insert(2, 2);
        exits.insert(1, 11); // pid 1 reused and exited again: now the newest
        exits.insert(3, 3); // evicts pid 2, the oldest
        assert_eq!(exits.take(2), None);
        assert_eq!(exits.take(1), Some(11));
        assert_eq!(exits.take(3), Some(3));
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut exits = UnclaimedExits::new(0);
        exits.insert(1, 1);
        assert_eq!(exits.take(1), None);
    }

    #[test]
    fn signalling_an_exited_process_is_a_no_op() {
        let registry = ExitRegistry::default();
        let rx = registry.register(i32::MAX - 1);
        registry.record_exit(i32::MAX - 1, 0);
        assert!(
            !registry
                .signal_if_running(i32::MAX - 1, &rx, libc::SIGKILL)
                .unwrap()
        );
    }

    #[test]
    fn signalling_a_vanished_pid_is_not_an_error() {
        let registry = ExitRegistry::default();
        // pid_max is at most 2^22, so this pid cannot exist.
        let rx = registry.register(i32::MAX - 2);
        assert!(!registry.signal_if_running(i32::MAX - 2, &rx, 0).unwrap());
    }

    #[test]
    fn acting_on_a_process_happens_only_while_it_runs() {
        let registry = ExitRegistry::default();
        let rx = registry.register(i32::MAX - 3);
        assert_eq!(registry.if_running(&rx, || 7), Some(7));
        registry.record_exit(i32::MAX - 3, 0);
        let mut acted = false;
        assert_eq!(registry.if_running(&rx, || acted = true), None);
        assert!(!acted);
    }
}
