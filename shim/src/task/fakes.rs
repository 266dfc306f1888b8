//! Fakes for the task state machine's unit tests: a guest ([`Guest`]) whose agent, VM and
//! host state record what the shim asked of them, and whose processes exit when the test
//! says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use husk_hypervisor::{VmExit, VmHandle};
use husk_protocol::agent::{ContainerStatsResponse, Stdio};
use husk_protocol::io_stream::{StreamHeader, StreamKind};
use slog::Logger;
use tokio::net::UnixStream;
use tokio::sync::watch;
use ttrpc::Code;

use super::{TaskError, TaskResult};
use crate::agent::{Agent, AgentError, ProcessExit, StreamError};
use crate::container_files::{ContainerFilesError, RootfsSource};
use crate::guest_spec::HostBind;
use crate::pod::{Pod, PodHost};
use crate::pod_dir::PodDirError;
use crate::pod_launch::{PodLauncher, PodPlan};
use crate::sandbox::{PodFileDirs, PodFiles, PodFilesError};

/// Host pid the fake VM reports (what Create returns).
pub const VM_PID: u32 = 4242;
/// Guest pids the fake agent hands out.
pub const INIT_PID: u32 = 100;
pub const EXEC_PID: u32 = 200;

type ProcessKey = (String, String);

/// One fake pod VM and everything in it.
pub struct Guest {
    /// Every agent, VM and host call, in order (`"start_container c1"`).
    calls: Mutex<Vec<String>>,
    processes: Mutex<HashMap<ProcessKey, watch::Sender<Option<i32>>>>,
    /// The agent's ends of the stdio streams the shim opened.
    streams: Mutex<HashMap<(String, String, StreamKind), UnixStream>>,
    /// Agent methods that fail, with the status they fail with.
    failing: Mutex<HashMap<&'static str, Code>>,
    vm_exit: watch::Sender<Option<VmExit>>,
    /// Launching the pod fails.
    pub launch_fails: Mutex<bool>,
    /// What ContainerStats answers.
    pub stats: Mutex<ContainerStatsResponse>,
    /// The OOM kills WaitProcess reports.
    pub oom_kills: Mutex<u64>,
    /// WaitOomKills answers at once with ever higher counts (a hostile guest).
    pub oom_flood: Mutex<bool>,
    /// The guest spec each container was created with.
    pub specs: Mutex<HashMap<String, Vec<u8>>>,
    /// Where the fake host writes a Sandbox API pod's files.
    pod_files: tempfile::TempDir,
}

impl Guest {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::default(),
            processes: Mutex::default(),
            streams: Mutex::default(),
            failing: Mutex::default(),
            vm_exit: watch::channel(None).0,
            launch_fails: Mutex::new(false),
            stats: Mutex::default(),
            oom_kills: Mutex::default(),
            specs: Mutex::default(),
            oom_flood: Mutex::new(false),
            pod_files: tempfile::tempdir().unwrap(),
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn called(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// `method` answers with `code` from now on.
    pub fn fail(&self, method: &'static str, code: Code) {
        self.failing.lock().unwrap().insert(method, code);
    }

    fn check(&self, method: &'static str) -> Result<(), AgentError> {
        match self.failing.lock().unwrap().get(method) {
            Some(code) => Err(rpc_error(method, *code)),
            None => Ok(()),
        }
    }

    /// The process exits with `status` (as the agent would report it).
    pub fn exit(&self, id: &str, exec_id: &str, status: i32) {
        let processes = self.processes.lock().unwrap();
        let process = processes
            .get(&(id.to_string(), exec_id.to_string()))
            .unwrap_or_else(|| panic!("no process {id}/{exec_id}"));
        process.send_replace(Some(status));
    }

    /// The agent's end of a process's stream.
    pub fn take_stream(&self, id: &str, exec_id: &str, kind: StreamKind) -> UnixStream {
        self.streams
            .lock()
            .unwrap()
            .remove(&(id.to_string(), exec_id.to_string(), kind))
            .unwrap_or_else(|| panic!("no {kind:?} stream for {id}/{exec_id}"))
    }

    /// The VMM dies without being asked to.
    pub fn vm_dies(&self) {
        self.vm_exit.send_replace(Some(VmExit {
            description: "killed by signal 9".into(),
            requested: false,
        }));
    }

    pub fn vm_stopped(&self) -> bool {
        self.vm_exit.borrow().is_some()
    }

    fn add_process(&self, id: &str, exec_id: &str) {
        self.processes.lock().unwrap().insert(
            (id.to_string(), exec_id.to_string()),
            watch::channel(None).0,
        );
    }

    fn exit_watch(&self, id: &str, exec_id: &str) -> Option<watch::Receiver<Option<i32>>> {
        self.processes
            .lock()
            .unwrap()
            .get(&(id.to_string(), exec_id.to_string()))
            .map(watch::Sender::subscribe)
    }

    fn running(&self, id: &str, exec_id: &str) -> bool {
        self.exit_watch(id, exec_id)
            .is_some_and(|w| w.borrow().is_none())
    }
}

fn rpc_error(method: &'static str, code: Code) -> AgentError {
    AgentError::Rpc {
        method,
        source: ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("fake {method}"))),
    }
}

/// The agent of [`Guest`].
pub struct FakeAgent(pub Arc<Guest>);

#[async_trait]
impl Agent for FakeAgent {
    async fn create_sandbox(
        &self,
        id: &str,
        _: &str,
        _: &str,
        _: Vec<u8>,
    ) -> Result<(), AgentError> {
        self.0.record(format!("create_sandbox {id}"));
        self.0.check("create_sandbox")
    }

    async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.0.record("destroy_sandbox".into());
        self.0.check("destroy_sandbox")
    }

    async fn configure_network(
        &self,
        interfaces: Vec<husk_protocol::agent::Interface>,
    ) -> Result<(), AgentError> {
        self.0
            .record(format!("configure_network {}", interfaces.len()));
        self.0.check("configure_network")
    }

    async fn create_container(&self, id: &str, spec: Vec<u8>, _: Stdio) -> Result<u32, AgentError> {
        self.0.record(format!("create_container {id}"));
        self.0.check("create_container")?;
        self.0.specs.lock().unwrap().insert(id.to_owned(), spec);
        self.0.add_process(id, "");
        Ok(INIT_PID)
    }

    async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.0.record(format!("start_container {id}"));
        self.0.check("start_container")
    }

    async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.0.record(format!("remove_container {id}"));
        // Removing a created container kills its init.
        if self.0.running(id, "") {
            self.0.exit(id, "", 137);
        }
        self.0.check("remove_container")
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        _: Vec<u8>,
        _: Stdio,
    ) -> Result<u32, AgentError> {
        self.0.record(format!("exec_process {id} {exec_id}"));
        self.0.check("exec_process")?;
        self.0.add_process(id, exec_id);
        Ok(EXEC_PID)
    }

    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        _: bool,
    ) -> Result<(), AgentError> {
        self.0
            .record(format!("signal_process {id} {exec_id} {signal}"));
        self.0.check("signal_process")?;
        if !self.0.running(id, exec_id) {
            return Err(rpc_error("signal_process", Code::NOT_FOUND));
        }
        self.0
            .exit(id, exec_id, 128 + i32::try_from(signal).unwrap());
        Ok(())
    }

    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ProcessExit, AgentError> {
        let Some(mut exit) = self.0.exit_watch(id, exec_id) else {
            return Err(rpc_error("wait_process", Code::NOT_FOUND));
        };
        let mut vm = self.0.vm_exit.subscribe();
        tokio::select! {
            status = exit.wait_for(Option::is_some) => Ok(ProcessExit {
                status: status.unwrap().unwrap(),
                oom_kills: *self.0.oom_kills.lock().unwrap(),
            }),
            _ = vm.wait_for(Option::is_some) => Err(AgentError::Stream {
                what: "wait".into(),
                source: StreamError::VmGone,
            }),
        }
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        self.0.record(format!("list_processes {id}"));
        self.0.check("list_processes")?;
        Ok(vec![INIT_PID])
    }

    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), AgentError> {
        let what = if paused { "pause" } else { "resume" };
        self.0.record(format!("{what} {id}"));
        self.0.check(what)
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), AgentError> {
        self.0.record(format!(
            "update {id} {}",
            String::from_utf8_lossy(&resources)
        ));
        self.0.check("update")
    }

    async fn sync_volume(&self, id: &str, source: &str, _: &str) -> Result<(), AgentError> {
        self.0.record(format!("sync_volume {id} {source}"));
        self.0.check("sync_volume")
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStatsResponse, AgentError> {
        self.0.record(format!("container_stats {id}"));
        self.0.check("container_stats")?;
        Ok(self.0.stats.lock().unwrap().clone())
    }

    async fn wait_oom_kills(
        &self,
        known: HashMap<String, u64>,
    ) -> Result<HashMap<String, u64>, AgentError> {
        // Every running container reports the guest's one OOM counter.
        loop {
            self.0.check("wait_oom_kills")?;
            if *self.0.oom_flood.lock().unwrap() {
                let mut counts = known.clone();
                counts.insert("c1".into(), known.get("c1").copied().unwrap_or(0) + 1);
                return Ok(counts);
            }
            let n = *self.0.oom_kills.lock().unwrap();
            let running: Vec<String> = self
                .0
                .processes
                .lock()
                .unwrap()
                .keys()
                .filter(|(_, exec)| exec.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            if running
                .iter()
                .any(|id| n > known.get(id).copied().unwrap_or(0))
            {
                return Ok(running.into_iter().map(|id| (id, n)).collect());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn pod_stats(&self) -> Result<ContainerStatsResponse, AgentError> {
        self.0.record("pod_stats".to_string());
        self.0.check("pod_stats")?;
        Ok(self.0.stats.lock().unwrap().clone())
    }

    async fn tty_resize(&self, id: &str, exec_id: &str, _: u32, _: u32) -> Result<(), AgentError> {
        self.0.record(format!("tty_resize {id} {exec_id}"));
        self.0.check("tty_resize")
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.0.record(format!("close_stdin {id} {exec_id}"));
        self.0.check("close_stdin")
    }

    async fn open_stream(&self, header: &StreamHeader) -> Result<UnixStream, AgentError> {
        let (shim_end, agent_end) = UnixStream::pair().unwrap();
        self.0.streams.lock().unwrap().insert(
            (
                header.container_id.clone(),
                header.exec_id.clone(),
                header.kind,
            ),
            agent_end,
        );
        Ok(shim_end)
    }
}

/// The VM of [`Guest`].
struct FakeVm {
    guest: Arc<Guest>,
    uds: PathBuf,
}

#[async_trait]
impl VmHandle for FakeVm {
    fn pid(&self) -> u32 {
        VM_PID
    }

    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.guest.vm_exit.subscribe()
    }

    fn diagnostics(&self) -> String {
        "fake VMM".into()
    }

    fn processes(&self) -> Vec<(String, u32)> {
        Vec::new()
    }

    async fn stop(&self, _grace: Duration) {
        self.guest.record("vm stop".into());
        self.guest.vm_exit.send_if_modified(|exit| {
            let first = exit.is_none();
            if first {
                *exit = Some(VmExit {
                    description: "stopped".into(),
                    requested: true,
                });
            }
            first
        });
    }
}

/// The host state of [`Guest`]'s pod.
struct FakeHost(Arc<Guest>);

#[async_trait]
impl PodHost for FakeHost {
    async fn prepare_container_files(
        &self,
        container_id: &str,
        _: RootfsSource,
        _: Vec<HostBind>,
    ) -> Result<(), ContainerFilesError> {
        self.0.record(format!("prepare_files {container_id}"));
        Ok(())
    }

    async fn remove_container_files(&self, container_id: &str) -> Result<(), PodDirError> {
        self.0.record(format!("remove_files {container_id}"));
        Ok(())
    }

    async fn write_pod_files(&self, files: &PodFiles) -> Result<PodFileDirs, PodFilesError> {
        self.0.record(format!("write_pod_files {}", files.hostname));
        let dir = self.0.pod_files.path();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        for d in ["shm", "pause-root"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        Ok(PodFileDirs {
            files: dir.to_path_buf(),
            pause_root: dir.join("pause-root"),
        })
    }

    async fn remove(&self) {
        self.0.record("remove_host_state".into());
    }
}

/// Launches [`Guest`]'s pod.
pub struct FakeLauncher(pub Arc<Guest>);

#[async_trait]
impl PodLauncher for FakeLauncher {
    async fn launch(&self, plan: &PodPlan, log: &Logger) -> TaskResult<Pod> {
        let group = plan.group.as_str();
        self.0.record(format!("launch {group}"));
        if *self.0.launch_fails.lock().unwrap() {
            return Err(TaskError::FailedPrecondition(
                "starting the pod VM: fake".into(),
            ));
        }
        let guest = self.0.clone();
        Ok(Pod::new(
            group,
            Box::new(FakeVm {
                guest: guest.clone(),
                uds: "/nonexistent/vsock.sock".into(),
            }),
            Box::new(FakeAgent(guest.clone())),
            Box::new(FakeHost(guest)),
            log,
        ))
    }
}
