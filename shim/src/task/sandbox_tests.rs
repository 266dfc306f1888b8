//! The Sandbox API's state machine against the fake guest: a pod booted by StartSandbox,
//! not by its first container, alive until StopSandbox, and a shim alive until
//! ShutdownSandbox.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::sandbox_api::CreateSandboxRequest;
use husk_protocol::cri_sandbox::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig,
};
use oci_spec::runtime::Spec;
use ttrpc::Code;

use super::fakes::{FakeLauncher, Guest, INIT_PID, VM_PID};
use super::{STATE_NOT_READY, STATE_READY, Shim};
use crate::events::Publisher;
use crate::start::SANDBOX_ID_ANNOTATION;

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(300);

fn shim(guest: &Arc<Guest>) -> Arc<Shim> {
    let (publisher, _) = Publisher::recording();
    Shim::new(
        "test".into(),
        "/nonexistent/shim.sock".into(),
        publisher,
        Arc::new(FakeLauncher(guest.clone())),
        slog::Logger::root(slog::Discard, slog::o!()),
    )
}

fn create_sandbox_req(id: &str, network: NamespaceMode) -> CreateSandboxRequest {
    let mut config = PodSandboxConfig::new();
    config.hostname = "web-0".into();
    let mut ns = NamespaceOption::new();
    ns.network = network.into();
    let mut sc = LinuxSandboxSecurityContext::new();
    sc.namespace_options = Some(ns).into();
    let mut linux = LinuxPodSandboxConfig::new();
    linux.security_context = Some(sc).into();
    config.linux = Some(linux).into();
    let mut options = Any::new();
    options.type_url = "runtime.v1.PodSandboxConfig".into();
    options.value = config.write_to_bytes().unwrap();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = id.into();
    req.netns_path = "/var/run/netns/cni-1".into();
    req.options = Some(options).into();
    req
}

/// A CRI container of pod `pod` that joins the pod's IPC namespace (by the host pid
/// containerd got from StartSandbox).
fn container_req(dir: &tempfile::TempDir, id: &str, pod: &str) -> CreateTaskRequest {
    let bundle = dir.path().join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": {SANDBOX_ID_ANNOTATION: pod},
        "linux": {"namespaces": [
            {"type": "ipc", "path": format!("/proc/{VM_PID}/ns/ipc")},
            {"type": "mount"}
        ]}
    }))
    .unwrap();
    spec.set_hostname(None);
    spec.save(bundle.join("config.json")).unwrap();
    let mut req = CreateTaskRequest::new();
    req.id = id.into();
    req.bundle = bundle.to_string_lossy().into_owned();
    req
}

fn exiting(shim: &Shim) -> bool {
    *shim.exit_requested().borrow()
}

#[tokio::test]
async fn a_sandbox_pod_lives_from_start_to_stop_and_the_shim_until_shutdown() {
    let guest = Guest::new();
    let shim = shim(&guest);
    let dir = tempfile::tempdir().unwrap();
    shim.create_sandbox(&create_sandbox_req("pod1", NamespaceMode::POD))
        .await
        .unwrap();
    assert_eq!(
        shim.sandbox_status("pod1", false).unwrap().state,
        STATE_NOT_READY
    );
    assert!(guest.calls().is_empty(), "CreateSandbox boots nothing");

    let (pid, _) = shim.start_sandbox("pod1").await.unwrap();
    assert_eq!(pid, VM_PID);
    let status = shim.sandbox_status("pod1", true).unwrap();
    assert_eq!((status.state, status.pid), (STATE_READY, VM_PID));
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(
        info["runtimeSpec"]["linux"]["namespaces"][0]["path"],
        "/var/run/netns/cni-1"
    );
    assert_eq!(info["pid"], VM_PID);
    shim.ping_sandbox("pod1").unwrap();

    let req = container_req(&dir, "c1", "pod1");
    assert_eq!(
        shim.create(&req).await.map_err(|e| e.to_string()),
        Ok(VM_PID)
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&guest.specs.lock().unwrap()["c1"]).unwrap();
    let ipc = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "ipc")
        .unwrap();
    assert_eq!(
        ipc["path"],
        format!("/proc/{INIT_PID}/ns/ipc"),
        "joins the pause process"
    );
    let destinations: Vec<&str> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["destination"].as_str())
        .collect();
    for d in [
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/shm",
    ] {
        assert!(
            destinations.contains(&d),
            "{d} missing from {destinations:?}"
        );
    }
    shim.start("c1", "").await.unwrap();
    guest.exit("c1", "", 0);
    tokio::time::timeout(LONG, shim.wait("c1", ""))
        .await
        .unwrap()
        .unwrap();
    shim.delete("c1", "").await.unwrap();
    assert!(!exiting(&shim), "the pod outlives its last container");
    assert!(!guest.vm_stopped());

    let waiting = {
        let shim = shim.clone();
        tokio::spawn(async move { shim.wait_sandbox("pod1").await })
    };
    tokio::time::sleep(SHORT).await;
    assert!(!waiting.is_finished());
    shim.stop_sandbox("pod1").await.unwrap();
    let exit = tokio::time::timeout(LONG, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, 0);
    assert!(guest.vm_stopped());
    assert_eq!(
        shim.sandbox_status("pod1", false).unwrap().state,
        STATE_NOT_READY
    );
    shim.stop_sandbox("pod1").await.unwrap();
    assert!(!exiting(&shim));
    shim.shutdown_sandbox("pod1").await.unwrap();
    assert!(exiting(&shim));
    let calls = guest.calls();
    assert_eq!(
        &calls[..6],
        [
            "launch pod1",
            "write_pod_files web-0",
            "prepare_files pod1",
            "create_container pod1",
            "start_container pod1",
            "prepare_files c1",
        ]
    );
}

#[tokio::test]
async fn containers_wait_for_start_sandbox_and_host_networks_are_refused() {
    let guest = Guest::new();
    let shim = shim(&guest);
    let dir = tempfile::tempdir().unwrap();
    let e = shim
        .create_sandbox(&create_sandbox_req("pod1", NamespaceMode::NODE))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("host-network"), "{e}");
    assert!(
        !exiting(&shim),
        "containerd shuts a refused sandbox's shim down"
    );

    shim.create_sandbox(&create_sandbox_req("pod1", NamespaceMode::POD))
        .await
        .unwrap();
    let again = shim
        .create_sandbox(&create_sandbox_req("pod2", NamespaceMode::POD))
        .await;
    assert_eq!(again.map_err(|e| e.code()), Err(Code::ALREADY_EXISTS));
    let early = shim.create(&container_req(&dir, "c1", "pod1")).await;
    assert_eq!(early.map_err(|e| e.code()), Err(Code::FAILED_PRECONDITION));
    assert!(
        !exiting(&shim),
        "a refused container does not end a sandbox shim"
    );
    assert!(guest.calls().is_empty());
    assert_eq!(
        shim.sandbox_status("other", false)
            .map(|_| ())
            .map_err(|e| e.code()),
        Err(Code::NOT_FOUND)
    );
}

#[tokio::test]
async fn a_refused_sandbox_shim_exits_on_shutdown() {
    let guest = Guest::new();
    let shim = shim(&guest);
    assert!(
        shim.create_sandbox(&create_sandbox_req("pod1", NamespaceMode::NODE))
            .await
            .is_err()
    );
    shim.shutdown_sandbox("pod1").await.unwrap();
    assert!(exiting(&shim));
}

#[tokio::test]
async fn the_sandbox_ends_with_its_pause_process_or_its_vm() {
    let guest = Guest::new();
    let shim = shim(&guest);
    shim.create_sandbox(&create_sandbox_req("pod1", NamespaceMode::POD))
        .await
        .unwrap();
    shim.start_sandbox("pod1").await.unwrap();
    guest.exit("pod1", "", 2);
    let exit = tokio::time::timeout(LONG, shim.wait_sandbox("pod1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, 2);
    assert_eq!(
        shim.sandbox_status("pod1", false).unwrap().state,
        STATE_NOT_READY
    );

    let guest = Guest::new();
    let shim = self::shim(&guest);
    shim.create_sandbox(&create_sandbox_req("pod2", NamespaceMode::POD))
        .await
        .unwrap();
    shim.start_sandbox("pod2").await.unwrap();
    guest.vm_dies();
    let exit = tokio::time::timeout(LONG, shim.wait_sandbox("pod2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, super::monitor::VM_DIED_EXIT_STATUS);
    tokio::time::sleep(SHORT).await;
    assert!(
        !exiting(&shim),
        "containerd's StopSandbox and ShutdownSandbox come next"
    );
    assert!(shim.ping_sandbox("pod2").is_err());
}
