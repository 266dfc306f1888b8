//! The shim's task API, driven directly the way containerd drives it: `start` verb, then
//! ttrpc requests, with a fake containerd events service recording what the shim
//! publishes. Checks the semantics ctr cannot reach: Wait before Start, error codes,
//! event order, TaskExit only after the output was copied, both task API names, and the
//! shim exiting after its last container.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Events, TaskClient, create_events};
use husk_tests::{Runtime, TestBed};
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::{Client, Server, TtrpcContext};
use ttrpc::{Code, Error as TtrpcError};

const RPC_TIMEOUT: Duration = Duration::from_secs(120);
const RPC_TIMEOUT_NANOS: i64 = 120_000_000_000;
const SIGKILL: u32 = 9;

/// Records every event the shim publishes, with the time it arrived.
#[derive(Default)]
struct EventLog {
    events: Mutex<Vec<(String, Any, Instant)>>,
}

#[async_trait]
impl Events for EventLog {
    async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        if let Some(env) = req.envelope.into_option() {
            let event = env.event.into_option().unwrap_or_default();
            self.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((env.topic, event, Instant::now()));
        }
        Ok(Empty::new())
    }
}

impl EventLog {
    fn topics_for(&self, container: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, any, _)| event_container(any) == container)
            .map(|(topic, _, _)| topic.clone())
            .collect()
    }

    fn exit_of(&self, id: &str) -> Option<(TaskExit, Instant)> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find_map(|(topic, any, at)| {
                let exit = TaskExit::parse_from_bytes(&any.value).ok()?;
                (topic == "/tasks/exit" && exit.id == id).then_some((exit, *at))
            })
    }
}

/// Every task event starts with `container_id` as field 1.
fn event_container(any: &Any) -> String {
    containerd_shim_protos::events::task::TaskStart::parse_from_bytes(&any.value)
        .map(|e| e.container_id)
        .unwrap_or_default()
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT_NANOS)
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Option<Code> {
    match r {
        Err(TtrpcError::RpcStatus(s)) => Some(s.code()),
        _ => None,
    }
}

/// A bundle whose rootfs is the busybox image (bind-mounted by the shim: no rootfs
/// mounts in the request), running `args`, in pod `pod`.
fn make_bundle(bed: &TestBed, pod: &str, id: &str, args: &[&str]) -> Result<PathBuf> {
    let spec_text = bed.ctr().checked(["oci", "spec"])?.stdout_text();
    let mut spec: serde_json::Value = serde_json::from_str(&spec_text)?;
    spec["root"] = serde_json::json!({ "path": bed.image_rootfs(), "readonly": true });
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin:/sbin:/usr/bin"]);
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.sandbox-id": pod,
    });
    let bundle = bed.dir().join(format!("bundle-{id}"));
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(bundle)
}

/// containerd's side of an output fifo: opened before Create, read to EOF on a thread.
struct FifoReader {
    path: PathBuf,
    file: Option<std::fs::File>,
    done: Option<std::thread::JoinHandle<(Vec<u8>, Instant)>>,
}

impl FifoReader {
    fn create(path: PathBuf) -> Result<Self> {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        Ok(Self {
            path,
            file: Some(file),
            done: None,
        })
    }

    /// After Create: the shim holds the write end, so reading blocks until it closes it.
    fn start(&mut self) -> Result<()> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut file = self.file.take().context("reader already started")?;
        // SAFETY: clearing O_NONBLOCK on a descriptor this reader owns.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
        ensure!(rc == 0, "fcntl on {:?}", self.path);
        self.done = Some(std::thread::spawn(move || {
            let mut data = Vec::new();
            let _ = file.read_to_end(&mut data);
            (data, Instant::now())
        }));
        Ok(())
    }

    fn finish(&mut self) -> Result<(Vec<u8>, Instant)> {
        let handle = self.done.take().context("reader not started")?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("fifo reader panicked"))
    }
}

struct Shim {
    client: TaskClient,
    raw: Client,
    socket: PathBuf,
}

/// Runs the `start` verb in `bundle` like containerd does and connects to the shim.
async fn start_shim(bed: &TestBed, bundle: &Path, id: &str, events_socket: &Path) -> Result<Shim> {
    let artifacts = husk_tests::Artifacts::from_env()?;
    let out = tokio::process::Command::new(artifacts.shim())
        .args(["-namespace", bed.ctr().namespace(), "-address"])
        .arg(bed.ctr().address())
        .args(["-id", id, "start"])
        .current_dir(bundle)
        .env("HUSK_CONFIG", artifacts.config())
        .env("TTRPC_ADDRESS", events_socket)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "shim start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let address = String::from_utf8(out.stdout)?;
    ensure!(
        address.starts_with("unix:///"),
        "start printed {address:?}, not a socket address"
    );
    let socket = PathBuf::from(address.trim_start_matches("unix://"));
    let raw = Client::connect(&address).await?;
    Ok(Shim {
        client: TaskClient::new(raw.clone()),
        raw,
        socket,
    })
}

fn create_request(id: &str, bundle: &Path, stdout: &Path, stderr: &Path) -> CreateTaskRequest {
    let mut r = CreateTaskRequest::new();
    r.id = id.into();
    r.bundle = bundle.display().to_string();
    r.stdout = stdout.display().to_string();
    r.stderr = stderr.display().to_string();
    r
}

fn exec_request(id: &str, exec_id: &str, args: &[&str]) -> ExecProcessRequest {
    let process = serde_json::json!({
        "args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin:/sbin:/usr/bin"],
    });
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = serde_json::to_vec(&process).unwrap_or_default();
    let mut r = ExecProcessRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    r.spec = MessageField::some(spec);
    r
}

fn req<T: Message + Default>(f: impl FnOnce(&mut T)) -> T {
    let mut r = T::default();
    f(&mut r);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_api_semantics_and_event_order() -> Result<()> {
    let bed = TestBed::start("shimapi", Runtime::Husk)?;
    let events = Arc::new(EventLog::default());
    let events_socket = bed.dir().join("events.sock");
    let mut server = Server::new()
        .bind(&format!("unix://{}", events_socket.display()))?
        .register_service(create_events(events.clone()));
    server.start().await?;

    let c1 = bed.id("c1");
    let c2 = bed.id("c2");
    let pod = bed.id("pod");
    let b1 = make_bundle(
        &bed,
        &pod,
        &c1,
        &["sh", "-c", "echo hello; exec sleep 1000"],
    )?;
    // Output right before the exit: TaskExit must wait until it has all been copied.
    let b2 = make_bundle(
        &bed,
        &pod,
        &c2,
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero; echo tail-line; exit 4",
        ],
    )?;
    let shim = start_shim(&bed, &b1, &c1, &events_socket).await?;
    let t = &shim.client;

    let mut out1 = FifoReader::create(bed.dir().join("c1.out"))?;
    let err1 = FifoReader::create(bed.dir().join("c1.err"))?;
    let created = t
        .create(ctx(), &create_request(&c1, &b1, &out1.path, &err1.path))
        .await?;
    ensure!(created.pid > 0, "Create returned pid 0");
    out1.start()?;
    let state = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        state.status.value() == Status::CREATED as i32,
        "state after create: {:?}",
        state.status
    );

    // Errors containerd relies on.
    let again = t
        .create(ctx(), &create_request(&c1, &b1, &out1.path, &err1.path))
        .await;
    ensure!(
        code_of(again) == Some(Code::ALREADY_EXISTS),
        "second Create of {c1} is not ALREADY_EXISTS"
    );
    let missing = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = "nope".into()))
        .await;
    ensure!(
        code_of(missing) == Some(Code::NOT_FOUND),
        "State of an unknown id is not NOT_FOUND"
    );
    let early_exec = t.exec(ctx(), &exec_request(&c1, "e0", &["true"])).await;
    ensure!(
        code_of(early_exec) == Some(Code::FAILED_PRECONDITION),
        "Exec before Start is not FAILED_PRECONDITION"
    );
    let paused = t
        .pause(ctx(), &req(|r: &mut PauseRequest| r.id = c1.clone()))
        .await;
    ensure!(
        code_of(paused) == Some(Code::UNIMPLEMENTED),
        "Pause is not UNIMPLEMENTED"
    );

    // Wait blocks even before Start.
    let waiter = {
        let t = t.clone();
        let c1 = c1.clone();
        tokio::spawn(async move {
            t.wait(
                ttrpc::context::Context::default(),
                &req(|r: &mut WaitRequest| r.id = c1),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!waiter.is_finished(), "Wait returned before Start");

    t.start(ctx(), &req(|r: &mut StartRequest| r.id = c1.clone()))
        .await?;
    let twice = t
        .start(ctx(), &req(|r: &mut StartRequest| r.id = c1.clone()))
        .await;
    ensure!(
        code_of(twice) == Some(Code::FAILED_PRECONDITION),
        "second Start is not FAILED_PRECONDITION"
    );

    // An exec: added, started, exits with its code; duplicates refused; kill after exit ok.
    t.exec(ctx(), &exec_request(&c1, "e1", &["sh", "-c", "exit 5"]))
        .await?;
    let dup = t.exec(ctx(), &exec_request(&c1, "e1", &["true"])).await;
    ensure!(
        code_of(dup) == Some(Code::ALREADY_EXISTS),
        "duplicate exec id is not ALREADY_EXISTS"
    );
    t.start(
        ctx(),
        &req(|r: &mut StartRequest| {
            r.id = c1.clone();
            r.exec_id = "e1".into()
        }),
    )
    .await?;
    let e1 = t
        .wait(
            ctx(),
            &req(|r: &mut WaitRequest| {
                r.id = c1.clone();
                r.exec_id = "e1".into()
            }),
        )
        .await?;
    ensure!(
        e1.exit_status == 5,
        "exec exit status {} (expected 5)",
        e1.exit_status
    );
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.exec_id = "e1".into();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let deleted = t
        .delete(
            ctx(),
            &req(|r: &mut DeleteRequest| {
                r.id = c1.clone();
                r.exec_id = "e1".into()
            }),
        )
        .await?;
    ensure!(
        deleted.exit_status == 5,
        "deleted exec reports {}",
        deleted.exit_status
    );

    let pids = t
        .pids(ctx(), &req(|r: &mut PidsRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        !pids.processes.is_empty(),
        "Pids of a running container is empty"
    );
    let running_delete = t
        .delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c1.clone()))
        .await;
    ensure!(
        code_of(running_delete) == Some(Code::FAILED_PRECONDITION),
        "Delete of a running task is not FAILED_PRECONDITION"
    );

    // containerd 1.6 dials the v2 name; the same service must answer there.
    let v2 = shim
        .raw
        .request(ttrpc::Request {
            service: "containerd.task.v2.Task".into(),
            method: "Connect".into(),
            timeout_nano: RPC_TIMEOUT_NANOS,
            payload: ConnectRequest::new().write_to_bytes()?,
            ..Default::default()
        })
        .await
        .context("Connect on containerd.task.v2.Task")?;
    let v2 = ConnectResponse::parse_from_bytes(&v2.payload)?;
    ensure!(v2.shim_pid > 0, "v2 Connect answered shim pid 0");

    // A second container in the same pod: its output completes before its TaskExit.
    let mut out2 = FifoReader::create(bed.dir().join("c2.out"))?;
    let err2 = FifoReader::create(bed.dir().join("c2.err"))?;
    let created2 = t
        .create(ctx(), &create_request(&c2, &b2, &out2.path, &err2.path))
        .await?;
    ensure!(
        created2.pid == created.pid,
        "second container of the pod got another VM (pid {} vs {})",
        created2.pid,
        created.pid
    );
    out2.start()?;
    t.start(ctx(), &req(|r: &mut StartRequest| r.id = c2.clone()))
        .await?;
    let w2 = t
        .wait(ctx(), &req(|r: &mut WaitRequest| r.id = c2.clone()))
        .await?;
    ensure!(w2.exit_status == 4, "c2 exit status {}", w2.exit_status);
    let (data2, eof2) = out2.finish()?;
    ensure!(
        data2.len() == 3_000_000 + "tail-line\n".len(),
        "c2 stdout has {} bytes",
        data2.len()
    );
    ensure!(
        data2.ends_with(b"tail-line\n"),
        "c2 stdout lost its last line"
    );
    let (exit2, exit2_at) = wait_for(|| events.exit_of(&c2)).await?;
    ensure!(
        exit2.exit_status == 4,
        "TaskExit of c2 says {}",
        exit2.exit_status
    );
    ensure!(
        eof2 <= exit2_at,
        "TaskExit of c2 arrived before its stdout was complete"
    );
    t.delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c2.clone()))
        .await?;

    // Kill the first container: the early Wait returns 137; kill after exit is fine.
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let waited = tokio::time::timeout(RPC_TIMEOUT, waiter).await???;
    ensure!(
        waited.exit_status == 137,
        "Wait after SIGKILL returned {}",
        waited.exit_status
    );
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let (out, _) = out1.finish()?;
    ensure!(
        out == b"hello\n",
        "c1 stdout {:?}",
        String::from_utf8_lossy(&out)
    );
    let state = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        state.status.value() == Status::STOPPED as i32 && state.exit_status == 137,
        "state after kill: {state:?}"
    );
    let deleted = t
        .delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        deleted.exit_status == 137,
        "Delete reports {}",
        deleted.exit_status
    );

    // Last container gone: the shim stops the VM and exits, removing its socket.
    let gone = wait_for(|| (!shim.socket.exists()).then_some(())).await;
    ensure!(
        gone.is_ok(),
        "shim socket {:?} still exists after the last Delete",
        shim.socket
    );

    let expected_c1 = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let got = events.topics_for(&c1);
    ensure!(
        got == expected_c1,
        "events for {c1}: {got:?}, expected {expected_c1:?}"
    );
    let expected_c2 = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let got = events.topics_for(&c2);
    ensure!(
        got == expected_c2,
        "events for {c2}: {got:?}, expected {expected_c2:?}"
    );

    drop(shim);
    server.shutdown().await?;
    bed.finish()?;
    Ok(())
}

/// Polls `f` until it yields, for at most a minute.
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("condition not met within a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
