//! CreateContainer and ExecProcess: reserve the id, write the spec, claim the stdio streams,
//! let the helper create the process, and record it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use oci_spec::runtime::Spec;
use slog::{Logger, debug};

use super::record::{Container, ExecSlot, Process, Slot};
use super::{
    ContainerError, Containers, cgroup, ids, record, spec, stats, sysctl, volume_mirror, volumes,
};
use crate::helper::{HelperOutcome, HelperRequest, Operation, PassedStdio};
use crate::stdio::{self, ContainerStdio, StdioRequest};

impl Containers {
    /// Creates container `id`; its init waits for [`Containers::start`]. Returns its pid.
    pub async fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        stdio: StdioRequest,
    ) -> Result<i32, ContainerError> {
        ids::validate_container_id(id)?;
        let kinds = stdio.kinds()?;
        let mut spec = spec::parse_spec(spec_json)?;
        spec::adjust_for_guest(&mut spec, id, &self.layout.shared_dir, stdio.terminal)?;
        let shares_vm_network = !spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            });
        let pod_sysctls = if shares_vm_network {
            sysctl::take_network_sysctls(&mut spec)?
        } else {
            Vec::new()
        };
        if let Some(root) = spec.root().as_ref().map(|r| r.path().clone()) {
            if !tokio::fs::try_exists(&root).await.unwrap_or(false) {
                return Err(ContainerError::RootfsMissing(root));
            }
        }
        volumes::automount(&spec, &self.layout.shared_dir).await;
        {
            let mut slots = self.slots();
            if slots.contains_key(id) {
                return Err(ContainerError::AlreadyExists(id.to_owned()));
            }
            slots.insert(id.to_owned(), Slot::Reserved);
        }
        let log = self.log.new(slog::o!("container" => id.to_owned()));
        if !pod_sysctls.is_empty() {
            debug!(log, "applying pod network sysctls"; "count" => pod_sysctls.len());
            if let Err(e) = apply_pod_sysctls(pod_sysctls).await {
                self.slots().remove(id);
                return Err(e);
            }
        }
        volumes::use_guest_copies(&mut spec, &self.layout, id, &log).await;
        let pod_cgroup = self.layout.cgroup_root.join(spec::CGROUP_PARENT);
        let pod_ooms = stats::oom_kills(&pod_cgroup);
        match self.create_reserved(id, &spec, stdio, &kinds, &log).await {
            Ok(process) => {
                let pid = process.pid;
                self.slots()
                    .insert(id.to_owned(), Slot::Ready(Container::new(process)));
                debug!(log, "container created"; "pid" => pid);
                Ok(pid)
            }
            Err(e) => {
                self.slots().remove(id);
                let layout = self.layout.clone();
                let owned_id = id.to_owned();
                // Best effort: libcontainer cleans up its own failures; this covers ours.
                let _ = tokio::task::spawn_blocking(move || discard_leftovers(&layout, &owned_id))
                    .await;
                // memory.events counts a child's OOM kills in the parent too: one during a
                // failed create is the container's own limit, far clearer than the
                // broken pipe libcontainer reports.
                match memory_limit(&spec) {
                    Some(limit) if stats::oom_kills(&pod_cgroup) > pod_ooms => {
                        Err(ContainerError::MemoryTooSmall {
                            limit,
                            source: Box::new(e),
                        })
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn create_reserved(
        &self,
        id: &str,
        spec: &Spec,
        stdio: StdioRequest,
        kinds: &[husk_protocol::io_stream::StreamKind],
        log: &Logger,
    ) -> Result<Process, ContainerError> {
        let bundle = self.layout.bundle(id);
        let json = serde_json::to_vec(spec).map_err(|e| ContainerError::Io {
            what: "serialising the adjusted spec".into(),
            source: e.into(),
        })?;
        write_private(&bundle, "config.json", json).await?;
        let claimed = self.streams.claim(id, "", kinds, Instant::now())?;
        let (fds, host) = stdio::prepare(claimed, stdio.terminal)?;
        let operation = Operation::Create { bundle };
        let outcome = self.launch(id, operation, fds, stdio.terminal).await?;
        let exit = self.exits.register(outcome.pid);
        let io = host.start(outcome.pty_master, log)?;
        Ok(Process::new(outcome.pid, exit, io))
    }

    /// Starts exec `exec_id` in running container `id`. Returns its pid.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: StdioRequest,
    ) -> Result<i32, ContainerError> {
        ids::validate_exec_id(exec_id)?;
        let kinds = stdio.kinds()?;
        let process = spec::parse_exec_process(process_json, stdio.terminal)?;
        self.require_not_paused(id)?;
        self.reserve_exec(id, exec_id)?;
        let log = self
            .log
            .new(slog::o!("container" => id.to_owned(), "exec" => exec_id.to_owned()));
        let result = async {
            let file = self.layout.exec_process_file(id, exec_id);
            let json = serde_json::to_vec(&process).map_err(|e| ContainerError::Io {
                what: "serialising the exec process".into(),
                source: e.into(),
            })?;
            write_private(
                &self.layout.bundle(id),
                &format!("exec-{exec_id}.json"),
                json,
            )
            .await?;
            let claimed = self.streams.claim(id, exec_id, &kinds, Instant::now())?;
            let (fds, host) = stdio::prepare(claimed, stdio.terminal)?;
            let operation = Operation::Exec {
                process_file: file.clone(),
                bundle: self.layout.bundle(id),
            };
            let launched = self.launch(id, operation, fds, stdio.terminal).await;
            let _ = tokio::fs::remove_file(&file).await;
            let outcome = launched?;
            let exit = self.exits.register(outcome.pid);
            let io = host.start(outcome.pty_master, &log)?;
            Ok::<_, ContainerError>(Process::new(outcome.pid, exit, io))
        }
        .await;
        let mut slots = self.slots();
        let container = match slots.get_mut(id) {
            Some(Slot::Ready(c)) => c,
            // Removed meanwhile: RemoveContainer killed the cgroup, the process is gone too.
            _ => return result.and(Err(ContainerError::NotFound(id.to_owned()))),
        };
        match result {
            Ok(process) => {
                let pid = process.pid;
                let seq = container.next_exec_seq;
                container.next_exec_seq += 1;
                container.execs.insert(
                    exec_id.to_owned(),
                    ExecSlot::Ready {
                        seq,
                        process: Arc::new(process),
                    },
                );
                debug!(log, "exec started"; "pid" => pid);
                Ok(pid)
            }
            Err(e) => {
                container.execs.remove(exec_id);
                Err(e)
            }
        }
    }

    fn reserve_exec(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let mut slots = self.slots();
        let container = record::ready(&mut slots, id)?;
        container.require_running(id)?;
        if container.execs.contains_key(exec_id) {
            return Err(ContainerError::ExecAlreadyExists {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            });
        }
        container.prune_exited_execs();
        container
            .execs
            .insert(exec_id.to_owned(), ExecSlot::Reserved);
        Ok(())
    }

    async fn launch(
        &self,
        id: &str,
        operation: Operation,
        fds: ContainerStdio,
        terminal: bool,
    ) -> Result<HelperOutcome, ContainerError> {
        let passed = PassedStdio {
            stdin: fds.stdin.is_some(),
            stdout: fds.stdout.is_some(),
            stderr: fds.stderr.is_some(),
        };
        let fds: Vec<OwnedFd> = [fds.stdin, fds.stdout, fds.stderr]
            .into_iter()
            .flatten()
            .collect();
        let request = HelperRequest {
            operation,
            container_id: id.to_owned(),
            state_root: self.layout.state_root.clone(),
            stdio: passed,
            console_dir: terminal.then(|| self.layout.console_dir.clone()),
        };
        Ok(self.launcher.run(&request, fds).await?)
    }
}

/// Writes `<dir>/<name>` (creating `dir`), readable by root only.
async fn write_private(dir: &Path, name: &str, contents: Vec<u8>) -> Result<(), ContainerError> {
    let dir = dir.to_path_buf();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |what: String| move |source| ContainerError::Io { what, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join(&name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        file.write_all(&contents)
            .map_err(io(format!("writing {}", path.display())))
    })
    .await?
}

/// Removes what a failed create may have left: processes, libcontainer state, the bundle.
fn discard_leftovers(layout: &super::Layout, id: &str) {
    let _ = cgroup::kill_all(&layout.cgroup_dir(id));
    if let Ok(mut container) = libcontainer::container::Container::load(layout.state_dir(id)) {
        let _ = container.delete(true);
    }
    volume_mirror::remove_all(&layout.bundle(id));
    let _ = std::fs::remove_dir_all(layout.bundle(id));
}

/// The container's memory limit in bytes, if it has one.
fn memory_limit(spec: &Spec) -> Option<i64> {
    spec.linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .memory()
        .as_ref()?
        .limit()
        .filter(|l| *l > 0)
}

/// Writes the pod's network sysctls (small /proc writes, off the async workers).
async fn apply_pod_sysctls(sysctls: Vec<(String, String)>) -> Result<(), ContainerError> {
    let write =
        tokio::task::spawn_blocking(move || sysctl::apply(Path::new(sysctl::PROC_SYS), &sysctls));
    match write.await {
        Ok(result) => Ok(result?),
        Err(join) => Err(sysctl::SysctlError::Write {
            name: "pod network sysctls".into(),
            value: String::new(),
            source: std::io::Error::other(join.to_string()),
        }
        .into()),
    }
}
