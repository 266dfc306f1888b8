//! The agent's records of containers and their processes.

use std::collections::HashMap;

use super::ContainerError;
use crate::reaper::ExitReceiver;
use crate::stdio::ProcessIo;

/// Exited exec records kept per container (the protocol has no call to forget one; Kubernetes
/// exec probes would otherwise grow the map forever). The oldest exited ones go first.
pub const MAX_EXITED_EXECS: usize = 128;

/// A container id's entry: reserved while CreateContainer runs, then the container.
pub enum Slot {
    Reserved,
    Ready(Container),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Starting,
    Started,
}

pub struct Container {
    pub phase: Phase,
    pub init: std::sync::Arc<Process>,
    pub execs: HashMap<String, ExecSlot>,
    /// Creation counter for exec records, to prune the oldest first.
    pub next_exec_seq: u64,
}

pub enum ExecSlot {
    Reserved,
    Ready {
        seq: u64,
        process: std::sync::Arc<Process>,
    },
}

/// The fully created container `id` of `slots`: NotFound or Busy (still being created)
/// otherwise.
pub fn ready<'a>(
    slots: &'a mut HashMap<String, Slot>,
    id: &str,
) -> Result<&'a mut Container, ContainerError> {
    match slots.get_mut(id) {
        None => Err(ContainerError::NotFound(id.to_owned())),
        Some(Slot::Reserved) => Err(ContainerError::Busy(id.to_owned())),
        Some(Slot::Ready(c)) => Ok(c),
    }
}

impl Container {
    /// A container that was started and whose init still runs (`id` names it in errors).
    pub fn require_running(&self, id: &str) -> Result<(), ContainerError> {
        if self.phase != Phase::Started {
            return Err(ContainerError::NotStarted(id.to_owned()));
        }
        if self.init.exit_status().is_some() {
            return Err(ContainerError::Stopped(id.to_owned()));
        }
        Ok(())
    }

    pub fn new(init: Process) -> Self {
        Self {
            phase: Phase::Created,
            init: init.into(),
            execs: HashMap::new(),
            next_exec_seq: 0,
        }
    }

    /// Forgets the oldest exited execs beyond [`MAX_EXITED_EXECS`].
    pub fn prune_exited_execs(&mut self) {
        let mut exited: Vec<(u64, String)> = self
            .execs
            .iter()
            .filter_map(|(id, slot)| match slot {
                ExecSlot::Ready { seq, process } if process.exit_status().is_some() => {
                    Some((*seq, id.clone()))
                }
                _ => None,
            })
            .collect();
        if exited.len() <= MAX_EXITED_EXECS {
            return;
        }
        exited.sort_unstable();
        let surplus = exited.len() - MAX_EXITED_EXECS;
        for (_, id) in exited.into_iter().take(surplus) {
            self.execs.remove(&id);
        }
    }
}

/// A process the agent created (a container's init or an exec).
pub struct Process {
    pub pid: i32,
    exit: ExitReceiver,
    pub io: ProcessIo,
}

impl Process {
    pub fn new(pid: i32, exit: ExitReceiver, io: ProcessIo) -> Self {
        Self { pid, exit, io }
    }

    pub fn exit_receiver(&self) -> &ExitReceiver {
        &self.exit
    }

    /// The shell-style exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits for the exit and returns its shell-style status.
    pub async fn wait(&self) -> Result<i32, ContainerError> {
        let mut exit = self.exit.clone();
        let status = exit.wait_for(Option::is_some).await.map(|s| *s);
        match status {
            Ok(Some(status)) => Ok(status),
            _ => Err(ContainerError::ExitLost(self.pid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;

    fn process(pid: i32, status: Option<i32>) -> Arc<Process> {
        let (_tx, rx) = watch::channel(status);
        Arc::new(Process::new(pid, rx, ProcessIo::detached()))
    }

    #[test]
    fn prunes_only_the_oldest_exited_execs() {
        let mut c = Container::new(Process::new(
            1,
            watch::channel(None).1,
            ProcessIo::detached(),
        ));
        let total = MAX_EXITED_EXECS + 5;
        for seq in 0..total as u64 {
            let status = if seq == 0 { None } else { Some(0) }; // exec 0 still runs
            c.execs.insert(
                format!("e{seq}"),
                ExecSlot::Ready {
                    seq,
                    process: process(2, status),
                },
            );
        }
        c.execs.insert("pending".into(), ExecSlot::Reserved);
        c.prune_exited_execs();
        assert!(c.execs.contains_key("e0"), "running execs are never pruned");
        assert!(c.execs.contains_key("pending"));
        for gone in 1..=4 {
            assert!(!c.execs.contains_key(&format!("e{gone}")));
        }
        assert!(c.execs.contains_key("e5"));
        assert_eq!(c.execs.len(), MAX_EXITED_EXECS + 2);
    }

    #[tokio::test]
    async fn wait_returns_the_status() {
        let (tx, rx) = watch::channel(None);
        let p = Process::new(3, rx, ProcessIo::detached());
        assert_eq!(p.exit_status(), None);
        tx.send(Some(7)).unwrap();
        assert_eq!(p.wait().await.unwrap(), 7);
        drop(tx);
        assert_eq!(p.wait().await.unwrap(), 7, "the last status stays readable");
    }
}
