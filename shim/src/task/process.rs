//! One process of a container (its init, or an exec) as the shim tracks it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::stdio::{OutputPumps, ProcessIo, StdinPump, StdioPaths};

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Created,
    Running,
    Stopped {
        exit_status: u32,
        exited_at: Timestamp,
    },
}

pub struct Process {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI `process` JSON of an exec (unused for init).
    pub exec_spec: Vec<u8>,
    guest_pid: AtomicU32,
    status: watch::Sender<Status>,
    stdin: Mutex<Option<StdinPump>>,
    outputs: Mutex<Option<OutputPumps>>,
    /// The shim's read ends of the output fifos (see `stdio`), until the process is deleted.
    held_readers: Mutex<Vec<std::fs::File>>,
}

impl Process {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioPaths, exec_spec: Vec<u8>) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            exec_spec,
            guest_pid: AtomicU32::new(0),
            status: watch::channel(Status::Created).0,
            stdin: Mutex::new(None),
            outputs: Mutex::new(None),
            held_readers: Mutex::new(Vec::new()),
        }
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    /// The id containerd uses for this process in events: the container id for init.
    pub fn event_id(&self) -> &str {
        if self.is_init() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn guest_pid(&self) -> u32 {
        self.guest_pid.load(Ordering::SeqCst)
    }

    pub fn set_guest_pid(&self, pid: u32) {
        self.guest_pid.store(pid, Ordering::SeqCst);
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn set_running(&self) {
        self.status.send_if_modified(|s| {
            let changed = *s == Status::Created;
            if changed {
                *s = Status::Running;
            }
            changed
        });
    }

    /// Records the exit; only the first call wins (the exit monitor and the VM-death handler
    /// may race). Returns true for the call that made the transition.
    pub fn set_stopped(&self, exit_status: u32, exited_at: Timestamp) -> bool {
        self.status.send_if_modified(|s| {
            if matches!(s, Status::Stopped { .. }) {
                return false;
            }
            *s = Status::Stopped {
                exit_status,
                exited_at,
            };
            true
        })
    }

    /// Resolves with the exit once the process has stopped.
    pub async fn wait_stopped(&self) -> (u32, Timestamp) {
        let mut rx = self.status.subscribe();
        loop {
            if let Status::Stopped {
                exit_status,
                exited_at,
            } = &*rx.borrow_and_update()
            {
                return (*exit_status, exited_at.clone());
            }
            if rx.changed().await.is_err() {
                return (255, Timestamp::new());
            }
        }
    }

    pub fn set_io(&self, io: ProcessIo) {
        if let Ok(mut slot) = self.stdin.lock() {
            *slot = io.stdin;
        }
        if let Ok(mut slot) = self.outputs.lock() {
            *slot = Some(io.outputs);
        }
        if let Ok(mut slot) = self.held_readers.lock() {
            *slot = io.held_readers;
        }
    }

    pub fn take_stdin(&self) -> Option<StdinPump> {
        self.stdin.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Takes the output pumps out (to await them without holding the lock).
    pub fn take_outputs(&self) -> Option<OutputPumps> {
        self.outputs.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Stops every pump of this process at once and lets go of its fifos.
    pub fn abort_io(&self) {
        drop(self.take_stdin());
        drop(self.take_outputs());
        if let Ok(mut held) = self.held_readers.lock() {
            held.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        let mut t = Timestamp::new();
        t.seconds = s;
        t
    }

    #[tokio::test]
    async fn first_exit_wins_and_waiters_see_it() {
        let p = std::sync::Arc::new(Process::new("c", "", StdioPaths::default(), Vec::new()));
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_stopped().await })
        };
        p.set_running();
        assert_eq!(p.status(), Status::Running);
        assert!(p.set_stopped(7, ts(1)));
        assert!(!p.set_stopped(137, ts(2)));
        assert_eq!(waiter.await.unwrap().0, 7);
        p.set_running();
        assert!(matches!(p.status(), Status::Stopped { exit_status: 7, .. }));
    }

    #[test]
    fn event_ids() {
        assert_eq!(
            Process::new("c", "", StdioPaths::default(), vec![]).event_id(),
            "c"
        );
        assert_eq!(
            Process::new("c", "e", StdioPaths::default(), vec![]).event_id(),
            "e"
        );
    }
}
