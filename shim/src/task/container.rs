//! A container of the pod: its init process, its execs, and where its files live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{TaskError, TaskResult};
use super::process::Process;

/// CRI's annotation telling sandbox (pause) containers from workload containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

pub struct Container {
    pub id: String,
    pub bundle: String,
    pub init: Arc<Process>,
    /// The pod's sandbox (pause) container, whose namespaces the others join.
    pub is_sandbox: bool,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Frozen by Pause (the guest's cgroup freezer) until Resume.
    paused: AtomicBool,
    /// OOM kills of the container's cgroup already reported to containerd.
    oom_kills_reported: AtomicU64,
}

/// Execs per container: bounded so a client cannot grow shim memory without limit.
const MAX_EXECS: usize = 1024;

impl Container {
    pub fn new(id: &str, bundle: &str, init: Arc<Process>, is_sandbox: bool) -> Self {
        Self {
            id: id.to_string(),
            bundle: bundle.to_string(),
            init,
            is_sandbox,
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            oom_kills_reported: AtomicU64::new(0),
        }
    }

    /// Records that the guest counted `oom_kills` so far; true if that is news.
    pub fn note_oom_kills(&self, oom_kills: u64) -> bool {
        self.oom_kills_reported
            .fetch_max(oom_kills, Ordering::SeqCst)
            < oom_kills
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// The init process for an empty `exec_id`, else that exec.
    pub fn process(&self, exec_id: &str) -> TaskResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .map_err(|_| TaskError::Internal("exec table poisoned".into()))?
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec_id} not found in container {}", self.id))
            })
    }

    pub fn add_exec(&self, process: Arc<Process>) -> TaskResult<()> {
        let mut execs = self
            .execs
            .lock()
            .map_err(|_| TaskError::Internal("exec table poisoned".into()))?;
        if execs.contains_key(&process.exec_id) {
            return Err(TaskError::AlreadyExists(format!(
                "exec {} already exists in container {}",
                process.exec_id, self.id
            )));
        }
        if execs.len() >= MAX_EXECS {
            return Err(TaskError::FailedPrecondition(format!(
                "container {} already has {MAX_EXECS} execs; delete some",
                self.id
            )));
        }
        execs.insert(process.exec_id.clone(), process);
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) {
        if let Ok(mut execs) = self.execs.lock() {
            execs.remove(exec_id);
        }
    }

    pub fn all_processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        if let Ok(execs) = self.execs.lock() {
            all.extend(execs.values().cloned());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::StdioPaths;

    fn proc(exec: &str) -> Arc<Process> {
        Arc::new(Process::new("c", exec, StdioPaths::default(), vec![]))
    }

    #[test]
    fn exec_table() {
        let c = Container::new("c", "/b", proc(""), false);
        assert!(c.process("").unwrap().is_init());
        assert!(matches!(c.process("e1"), Err(TaskError::NotFound(_))));
        c.add_exec(proc("e1")).unwrap();
        assert!(matches!(
            c.add_exec(proc("e1")),
            Err(TaskError::AlreadyExists(_))
        ));
        assert_eq!(c.all_processes().len(), 2);
        c.remove_exec("e1");
        assert!(c.process("e1").is_err());
    }
}
