//! What the task-API tests share: a fake containerd events service, bundles for pods of
//! the busybox image, containerd's side of the stdio fifos, and the `start` verb plus a
//! ttrpc connection to the shim, as containerd drives them.

#![allow(dead_code)] // each test binary uses its own part

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
use husk_tests::TestBed;
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::{Client, Server, TtrpcContext};
use ttrpc::{Code, Error as TtrpcError};

pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);
pub const RPC_TIMEOUT_NANOS: i64 = 120_000_000_000;
pub const SIGKILL: u32 = 9;

/// Records every event the shim publishes, with the time it arrived.
#[derive(Default)]
pub struct EventLog {
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
    pub fn topics_for(&self, container: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, any, _)| event_container(any) == container)
            .map(|(topic, _, _)| topic.clone())
            .collect()
    }

    pub fn exit_of(&self, id: &str) -> Option<(TaskExit, Instant)> {
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
pub fn event_container(any: &Any) -> String {
    containerd_shim_protos::events::task::TaskStart::parse_from_bytes(&any.value)
        .map(|e| e.container_id)
        .unwrap_or_default()
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT_NANOS)
}

pub fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Option<Code> {
    match r {
        Err(TtrpcError::RpcStatus(s)) => Some(s.code()),
        _ => None,
    }
}

/// A bundle whose rootfs is the busybox image (bind-mounted by the shim: no rootfs
/// mounts in the request), running `args`, in pod `pod`.
pub fn make_bundle(bed: &TestBed, pod: &str, id: &str, args: &[&str]) -> Result<PathBuf> {
    make_bundle_with(bed, pod, id, args, |_| {})
}

/// [`make_bundle`], with `edit` applied to the spec last.
pub fn make_bundle_with(
    bed: &TestBed,
    pod: &str,
    id: &str,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<PathBuf> {
    let spec_text = bed.ctr().checked(["oci", "spec"])?.stdout_text();
    let mut spec: serde_json::Value = serde_json::from_str(&spec_text)?;
    // A copy of the image per bundle: the shim bind-mounts `root.path` as it is, and a
    // container (or an attacker in one) must not change the image every test shares.
    let bundle = bed.dir().join(format!("bundle-{id}"));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&bundle)?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(bed.image_rootfs())
        .arg(&rootfs)
        .status()?;
    ensure!(copied.success(), "copying the image rootfs into {bundle:?}");
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin:/sbin:/usr/bin"]);
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.sandbox-id": pod,
    });
    // `ctr oci spec` names one cgroup for every spec; a pod's cgroup must be its own.
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/husk-test/{id}"));
    edit(&mut spec);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(bundle)
}

/// containerd's events service, faked: records what the shim publishes.
pub struct FakeContainerd {
    pub events: Arc<EventLog>,
    pub socket: PathBuf,
    server: Server,
}

impl FakeContainerd {
    pub async fn start(bed: &TestBed) -> Result<Self> {
        let events = Arc::new(EventLog::default());
        let socket = bed.dir().join("events.sock");
        let mut server = Server::new()
            .bind(&format!("unix://{}", socket.display()))?
            .register_service(create_events(events.clone()));
        server.start().await?;
        Ok(Self {
            events,
            socket,
            server,
        })
    }

    pub async fn shutdown(mut self) -> Result<()> {
        self.server.shutdown().await?;
        Ok(())
    }
}

/// containerd's side of an output fifo: opened before Create, read to EOF on a thread.
pub struct FifoReader {
    pub path: PathBuf,
    file: Option<std::fs::File>,
    done: Option<std::thread::JoinHandle<(Vec<u8>, Instant)>>,
}

impl FifoReader {
    pub fn create(path: PathBuf) -> Result<Self> {
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
    pub fn start(&mut self) -> Result<()> {
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

    pub fn finish(&mut self) -> Result<(Vec<u8>, Instant)> {
        let handle = self.done.take().context("reader not started")?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("fifo reader panicked"))
    }
}

pub struct Shim {
    pub client: TaskClient,
    pub raw: Client,
    pub socket: PathBuf,
}

/// Runs the `start` verb in `bundle` like containerd does and connects to the shim.
pub async fn start_shim(
    bed: &TestBed,
    bundle: &Path,
    id: &str,
    events_socket: &Path,
) -> Result<Shim> {
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

pub fn create_request(id: &str, bundle: &Path, stdout: &Path, stderr: &Path) -> CreateTaskRequest {
    let mut r = CreateTaskRequest::new();
    r.id = id.into();
    r.bundle = bundle.display().to_string();
    r.stdout = stdout.display().to_string();
    r.stderr = stderr.display().to_string();
    r
}

pub fn exec_request(id: &str, exec_id: &str, args: &[&str]) -> ExecProcessRequest {
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

pub fn req<T: Message + Default>(f: impl FnOnce(&mut T)) -> T {
    let mut r = T::default();
    f(&mut r);
    r
}

/// Polls `f` until it yields, for at most a minute.
pub async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Result<T> {
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
