//! The task state machine against a fake agent, VM and host ([`super::fakes`]): the order of
//! operations and events containerd relies on, and the status codes it gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::{CreateTaskRequest, ExecProcessRequest, Status as ApiStatus};
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC,
    TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use husk_protocol::io_stream::StreamKind;
use oci_spec::runtime::Spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::Code;

use super::Shim;
use super::fakes::{EXEC_PID, FakeLauncher, Guest, INIT_PID, VM_PID};
use crate::events::{Publisher, Recorded};
use crate::start::SANDBOX_ID_ANNOTATION;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

pub(super) struct World {
    pub(super) shim: Arc<Shim>,
    pub(super) guest: Arc<Guest>,
    pub(super) events: Recorded,
    dir: tempfile::TempDir,
}

pub(super) fn world() -> World {
    let guest = Guest::new();
    let (publisher, events) = Publisher::recording();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let shim = Shim::new(
        "test".into(),
        "/nonexistent/shim.sock".into(),
        publisher,
        Arc::new(FakeLauncher(guest.clone())),
        log,
    );
    World {
        shim,
        guest,
        events,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// A bundle for container `id` of pod `pod`, with stdio `stdout` (empty: none).
    fn create_req(&self, id: &str, pod: &str, stdout: &str) -> CreateTaskRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = Spec::default();
        spec.set_annotations(Some(HashMap::from([(
            SANDBOX_ID_ANNOTATION.to_string(),
            pod.to_string(),
        )])));
        spec.save(bundle.join("config.json")).unwrap();
        let mut req = CreateTaskRequest::new();
        req.id = id.into();
        req.bundle = bundle.to_string_lossy().into_owned();
        req.stdout = stdout.into();
        req
    }

    async fn create(&self, id: &str) -> Result<u32, Code> {
        let req = self.create_req(id, "pod1", "");
        self.shim.create(&req).await.map_err(|e| e.code())
    }

    pub(super) async fn running(&self, id: &str) {
        assert_eq!(self.create(id).await, Ok(VM_PID));
        assert_eq!(self.shim.start(id, "").await.ok(), Some(INIT_PID));
    }

    pub(super) fn exec_req(&self, id: &str, exec_id: &str) -> ExecProcessRequest {
        let mut spec = Any::new();
        spec.value = serde_json::to_vec(&oci_spec::runtime::Process::default()).unwrap();
        let mut req = ExecProcessRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        req.spec = Some(spec).into();
        req
    }

    pub(super) fn status(&self, id: &str, exec_id: &str) -> Result<ApiStatus, Code> {
        self.shim
            .state(id, exec_id)
            .map(|s| s.status.enum_value_or_default())
            .map_err(|e| e.code())
    }

    fn exiting(&self) -> bool {
        *self.shim.exit_requested().borrow()
    }
}

fn code<T>(r: super::TaskResult<T>) -> Option<Code> {
    r.err().map(|e| e.code())
}

#[tokio::test]
async fn create_start_wait_delete_run_in_order_and_the_last_delete_ends_the_pod() {
    let mut w = world();
    w.running("c1").await;
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
    w.guest.exit("c1", "", 3);
    let (status, _) = tokio::time::timeout(LONG, w.shim.wait("c1", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 3);
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::STOPPED));
    assert!(!w.exiting());
    let info = w.shim.delete("c1", "").await.unwrap();
    assert_eq!((info.pid, info.exit_status), (INIT_PID, 3));
    assert_eq!(
        w.events.topics().await,
        [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC,
            TASK_DELETE_EVENT_TOPIC
        ]
    );
    assert_eq!(
        w.guest.calls(),
        [
            "launch pod1",
            "prepare_files c1",
            "create_container c1",
            "start_container c1",
            "remove_container c1",
            "remove_files c1",
            "destroy_sandbox",
            "vm stop",
            "remove_host_state",
        ]
    );
    assert!(w.exiting(), "the shim exits after the pod's last delete");
    assert_eq!(code(w.shim.state("c1", "")), Some(Code::NOT_FOUND));
}

#[tokio::test]
async fn wait_before_start_returns_when_the_process_exits() {
    let w = world();
    assert_eq!(w.create("c1").await, Ok(VM_PID));
    let shim = w.shim.clone();
    let waiting = tokio::spawn(async move { shim.wait("c1", "").await });
    tokio::time::sleep(SHORT).await;
    assert!(!waiting.is_finished(), "nothing has exited yet");
    w.shim.start("c1", "").await.unwrap();
    w.guest.exit("c1", "", 0);
    let (status, _) = tokio::time::timeout(LONG, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 0);
}

#[tokio::test]
async fn kill_signals_a_running_process_and_is_a_no_op_after_it_exited() {
    let w = world();
    w.running("c1").await;
    w.shim.kill("c1", "", 15, false).await.unwrap();
    let (status, _) = tokio::time::timeout(LONG, w.shim.wait("c1", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 128 + 15);
    w.shim.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(w.guest.called("signal_process c1  15"), 1);
    assert_eq!(
        w.guest.called("signal_process c1  9"),
        0,
        "an exited process is not signalled"
    );
}

#[tokio::test]
async fn a_duplicate_create_is_refused_and_leaves_the_first_container_alone() {
    let w = world();
    w.running("c1").await;
    assert_eq!(w.create("c1").await, Err(Code::ALREADY_EXISTS));
    assert_eq!(w.guest.called("create_container c1"), 1);
    assert_eq!(w.guest.called("prepare_files c1"), 1);
    assert_eq!(w.guest.called("remove_container c1"), 0);
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
}

#[tokio::test]
async fn exec_runs_through_its_own_lifecycle() {
    let mut w = world();
    assert_eq!(w.create("c1").await, Ok(VM_PID));
    // Not before the container runs.
    assert_eq!(
        code(w.shim.exec(&w.exec_req("c1", "e1")).await),
        Some(Code::FAILED_PRECONDITION)
    );
    w.shim.start("c1", "").await.unwrap();
    w.shim.exec(&w.exec_req("c1", "e1")).await.unwrap();
    assert_eq!(
        code(w.shim.exec(&w.exec_req("c1", "e1")).await),
        Some(Code::ALREADY_EXISTS)
    );
    assert_eq!(
        code(w.shim.kill("c1", "e1", 9, false).await),
        Some(Code::FAILED_PRECONDITION),
        "an exec that never started cannot be signalled"
    );
    assert_eq!(w.shim.start("c1", "e1").await.ok(), Some(EXEC_PID));
    assert_eq!(w.status("c1", "e1"), Ok(ApiStatus::RUNNING));
    assert_eq!(
        code(w.shim.delete("c1", "e1").await),
        Some(Code::FAILED_PRECONDITION),
        "a running exec is not deleted"
    );
    w.guest.exit("c1", "e1", 5);
    let (status, _) = tokio::time::timeout(LONG, w.shim.wait("c1", "e1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 5);
    let info = w.shim.delete("c1", "e1").await.unwrap();
    assert_eq!((info.pid, info.exit_status), (EXEC_PID, 5));
    assert_eq!(code(w.shim.state("c1", "e1")), Some(Code::NOT_FOUND));
    assert_eq!(
        w.status("c1", ""),
        Ok(ApiStatus::RUNNING),
        "the container goes on"
    );
    assert!(!w.exiting());
    let topics = w.events.topics().await;
    assert_eq!(
        topics,
        [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TASK_EXEC_STARTED_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC
        ]
    );
}

/// TaskExit tells containerd the output is complete: it is published only after every
/// byte the process wrote reached the client's fifo.
#[tokio::test]
async fn task_exit_is_published_only_after_the_output_is_drained() {
    let mut w = world();
    let fifo = w.dir.path().join("stdout");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // containerd opens its read end before Create.
    let mut client = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();
    let req = w.create_req("c1", "pod1", fifo.to_str().unwrap());
    w.shim.create(&req).await.unwrap();
    w.shim.start("c1", "").await.unwrap();
    let mut stdout = w.guest.take_stream("c1", "", StreamKind::Stdout);
    stdout.write_all(b"first ").await.unwrap();
    w.guest.exit("c1", "", 0);
    assert_eq!(
        w.events.topics().await,
        [TASK_CREATE_EVENT_TOPIC, TASK_START_EVENT_TOPIC]
    );
    tokio::time::sleep(SHORT).await;
    assert!(
        w.events.next(SHORT).await.is_none(),
        "no TaskExit while the output is still open"
    );
    stdout.write_all(b"last").await.unwrap();
    drop(stdout);
    let (topic, event) = w.events.next(LONG).await.unwrap();
    assert_eq!(topic, TASK_EXIT_EVENT_TOPIC);
    let exit = event.downcast_box::<TaskExit>().unwrap();
    assert_eq!((exit.container_id.as_str(), exit.exit_status), ("c1", 0));
    let mut output = Vec::new();
    tokio::time::timeout(LONG, client.read_to_end(&mut output))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output, b"first last");
}

#[tokio::test]
async fn errors_carry_containerd_status_codes() {
    let w = world();
    assert_eq!(code(w.shim.start("nope", "").await), Some(Code::NOT_FOUND));
    assert_eq!(
        code(w.shim.kill("nope", "", 9, false).await),
        Some(Code::NOT_FOUND)
    );
    assert_eq!(w.create("../escape").await, Err(Code::INVALID_ARGUMENT));
    let mut bad_pod = w.create_req("c0", "../pod", "");
    bad_pod.id = "c0".into();
    assert_eq!(
        code(w.shim.create(&bad_pod).await),
        Some(Code::INVALID_ARGUMENT)
    );
    w.running("c1").await;
    assert_eq!(
        code(w.shim.start("c1", "").await),
        Some(Code::FAILED_PRECONDITION),
        "already started"
    );
    assert_eq!(code(w.shim.wait("c1", "e9").await), Some(Code::NOT_FOUND));
    // The agent's own status passes through; an agent that did not answer is UNAVAILABLE.
    w.guest.fail("list_processes", Code::PERMISSION_DENIED);
    assert_eq!(code(w.shim.pids("c1").await), Some(Code::PERMISSION_DENIED));
    let unanswered = super::TaskError::Agent(crate::agent::AgentError::Stream {
        what: "stdout".into(),
        source: crate::agent::StreamError::Refused(1),
    });
    assert_eq!(unanswered.code(), Code::UNAVAILABLE);
    let status: ttrpc::Error = super::TaskError::NotFound("container c9 not found".into()).into();
    let ttrpc::Error::RpcStatus(status) = status else {
        panic!("not a status: {status:?}");
    };
    assert_eq!(
        (status.code(), status.message()),
        (Code::NOT_FOUND, "container c9 not found")
    );
}

#[tokio::test]
async fn a_failed_first_create_ends_the_shim() {
    let w = world();
    *w.guest.launch_fails.lock().unwrap() = true;
    assert_eq!(w.create("c1").await, Err(Code::FAILED_PRECONDITION));
    assert!(w.exiting());
    *w.guest.launch_fails.lock().unwrap() = false;
    assert_eq!(
        w.create("c2").await,
        Err(Code::FAILED_PRECONDITION),
        "a shim on its way out takes no new pod"
    );
    assert_eq!(w.guest.called("launch pod1"), 1);
}

#[tokio::test]
async fn a_container_the_agent_refuses_takes_down_the_pod_it_booted() {
    let w = world();
    w.guest.fail("create_container", Code::INVALID_ARGUMENT);
    assert_eq!(w.create("c1").await, Err(Code::INVALID_ARGUMENT));
    let calls = w.guest.calls();
    for step in [
        "remove_files c1",
        "destroy_sandbox",
        "vm stop",
        "remove_host_state",
    ] {
        assert!(
            calls.iter().any(|c| c == step),
            "{step} missing from {calls:?}"
        );
    }
    assert!(w.guest.vm_stopped());
    assert!(w.exiting());
}

#[tokio::test]
async fn a_second_container_the_agent_refuses_leaves_the_pod_running() {
    let w = world();
    w.running("c1").await;
    w.guest.fail("create_container", Code::INVALID_ARGUMENT);
    assert_eq!(w.create("c2").await, Err(Code::INVALID_ARGUMENT));
    assert_eq!(
        w.guest.called("remove_files c2"),
        1,
        "its files are cleaned up"
    );
    assert!(!w.guest.vm_stopped());
    assert!(!w.exiting());
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
    assert_eq!(code(w.shim.state("c2", "")), Some(Code::NOT_FOUND));
}

#[tokio::test]
async fn a_container_of_another_pod_is_refused() {
    let w = world();
    w.running("c1").await;
    let other = w.create_req("c2", "pod2", "");
    assert_eq!(
        code(w.shim.create(&other).await),
        Some(Code::FAILED_PRECONDITION)
    );
    assert_eq!(w.guest.called("launch pod2"), 0);
}

#[tokio::test]
async fn deleting_a_created_container_reports_it_killed() {
    let w = world();
    w.running("c1").await;
    assert_eq!(w.create("c2").await, Ok(VM_PID));
    let info = tokio::time::timeout(LONG, w.shim.delete("c2", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.exit_status, 137);
    assert!(!w.exiting(), "c1 still runs");
}

#[tokio::test]
async fn a_dead_vm_reports_every_process_exited_and_ends_the_shim() {
    let mut w = world();
    w.running("c1").await;
    w.shim.exec(&w.exec_req("c1", "e1")).await.unwrap();
    w.shim.start("c1", "e1").await.unwrap();
    w.guest.vm_dies();
    let mut exits = Vec::new();
    while let Some((topic, event)) = w.events.next(LONG).await {
        if topic == TASK_EXIT_EVENT_TOPIC {
            let exit = event.downcast_box::<TaskExit>().unwrap();
            exits.push((exit.id.clone(), exit.exit_status));
            if exits.len() == 2 {
                break;
            }
        }
    }
    exits.sort();
    assert_eq!(exits, [("c1".to_string(), 137), ("e1".to_string(), 137)]);
    let mut exit = w.shim.exit_requested();
    tokio::time::timeout(LONG, exit.wait_for(|e| *e))
        .await
        .unwrap()
        .unwrap();
    assert!(w.guest.calls().iter().any(|c| c == "remove_host_state"));
}

#[tokio::test]
async fn pause_and_resume_freeze_the_container_report_paused_and_publish_events() {
    let mut w = world();
    w.running("c1").await;
    assert_eq!(
        code(w.shim.set_paused("c1", false).await),
        Some(Code::FAILED_PRECONDITION)
    );
    w.shim.set_paused("c1", true).await.unwrap();
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::PAUSED));
    // Pausing again is no new request to the guest.
    w.shim.set_paused("c1", true).await.unwrap();
    assert_eq!(w.guest.called("pause c1"), 1);
    // A frozen cgroup would freeze a new exec on entry: refused up front.
    w.shim.exec(&w.exec_req("c1", "e1")).await.unwrap();
    assert_eq!(
        code(w.shim.start("c1", "e1").await),
        Some(Code::FAILED_PRECONDITION)
    );
    w.shim.set_paused("c1", false).await.unwrap();
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
    assert_eq!(w.guest.called("resume c1"), 1);
    let topics = w.events.topics().await;
    let paused = topics.iter().position(|t| *t == TASK_PAUSED_EVENT_TOPIC);
    let resumed = topics.iter().position(|t| *t == TASK_RESUMED_EVENT_TOPIC);
    assert!(paused.is_some() && paused < resumed, "{topics:?}");
}

#[tokio::test]
async fn only_a_running_container_pauses_and_a_failed_freeze_changes_nothing() {
    let w = world();
    assert_eq!(w.create("c1").await, Ok(VM_PID));
    assert_eq!(
        code(w.shim.set_paused("c1", true).await),
        Some(Code::FAILED_PRECONDITION)
    );
    assert_eq!(
        code(w.shim.set_paused("nope", true).await),
        Some(Code::NOT_FOUND)
    );
    w.shim.start("c1", "").await.unwrap();
    w.guest.fail("pause", Code::DEADLINE_EXCEEDED);
    assert_eq!(
        code(w.shim.set_paused("c1", true).await),
        Some(Code::DEADLINE_EXCEEDED)
    );
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
}

#[tokio::test]
async fn stats_are_the_guest_figures_as_cgroup_v2_metrics() {
    use containerd_shim_protos::cgroups_v2::metrics::Metrics;
    use containerd_shim_protos::protobuf::Message;
    let w = world();
    w.running("c1").await;
    w.guest
        .stats
        .lock()
        .unwrap()
        .counters
        .insert("memory.current".into(), 64 << 20);
    let any = w.shim.stats("c1").await.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let m = Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage, 64 << 20);
    assert_eq!(code(w.shim.stats("nope").await), Some(Code::NOT_FOUND));
}

#[tokio::test]
async fn update_passes_checked_resources_to_the_guest() {
    let w = world();
    w.running("c1").await;
    let mut any = Any::new();
    any.value = br#"{"memory":{"limit":67108864}}"#.to_vec();
    w.shim.update("c1", Some(&any)).await.unwrap();
    assert_eq!(
        w.guest.called(r#"update c1 {"memory":{"limit":67108864}}"#),
        1
    );
    any.value = b"{not json".to_vec();
    assert_eq!(
        code(w.shim.update("c1", Some(&any)).await),
        Some(Code::INVALID_ARGUMENT)
    );
    any.value = vec![b' '; 65 * 1024];
    assert_eq!(
        code(w.shim.update("c1", Some(&any)).await),
        Some(Code::INVALID_ARGUMENT)
    );
    assert_eq!(
        code(w.shim.update("nope", None).await),
        Some(Code::NOT_FOUND)
    );
}
