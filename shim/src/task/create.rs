//! Create: the first container of a pod boots the VM; every container gets its rootfs and
//! bind mounts into the pod share, its stdio streams, and its guest container.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::TASK_CREATE_EVENT_TOPIC;
use oci_spec::runtime::Spec;
use slog::warn;

use super::container::{CONTAINER_TYPE_ANNOTATION, Container};
use super::error::{TaskError, TaskResult};
use super::process::Process;
use super::{PodSlot, Shim};
use crate::container_files::{ContainerFilesError, RootfsSource};
use crate::guest_spec;
use crate::ids;
use crate::mounts::MountSpec;
use crate::pod::Pod;
use crate::pod_launch::PodPlan;
use crate::start::SANDBOX_ID_ANNOTATION;
use crate::start_phases::Mark;
use crate::stdio::{ProcessIo, StdioPaths};

impl Shim {
    pub async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> TaskResult<u32> {
        let id = req.id.as_str();
        let (spec, group, is_sandbox) = check_create(req)?;

        // Creates run one at a time under this lock, and a container is registered before
        // it is released: checking for the id here reserves it, so a duplicate Create is
        // refused before it touches anything of the existing container.
        let guard = self.boot.lock().await;
        if self.container(id).is_ok() {
            return Err(TaskError::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        let (pod, booted_here) = match self.pod_for(&group, req, &spec).await {
            Ok(p) => p,
            Err(e) => {
                if self.container_count() == 0 && !self.sandbox_managed() {
                    // Nothing to serve without a pod: exit after replying.
                    self.give_up_pod(None).await;
                }
                return Err(e);
            }
        };
        let init = Arc::new(Process::new(id, "", stdio_paths(req), Vec::new()));
        let bundle = PathBuf::from(&req.bundle);
        let created = self.create_in_pod(&pod, &init, &bundle, req, spec).await;
        if let Err(e) = created {
            warn!(self.log, "create failed"; "container" => id, "error" => %e);
            if booted_here {
                // The pod exists only for this container: take it down and exit.
                self.give_up_pod(Some(&pod)).await;
            }
            return Err(e);
        }
        let container = Arc::new(Container::new(id, &req.bundle, init.clone(), is_sandbox));
        if let Ok(mut c) = self.containers.lock() {
            c.insert(id.to_string(), container);
        }
        drop(guard);

        self.publisher
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                Box::new(create_event(req, pod.vm.pid())),
            )
            .await;
        self.spawn_exit_monitor(pod.clone(), init);
        Ok(pod.vm.pid())
    }

    /// No pod will be served any more: `pod` (if it was booted) is taken down, then the
    /// shim exits once the current reply is out.
    pub(super) async fn give_up_pod(&self, pod: Option<&Pod>) {
        if let Ok(mut slot) = self.pod.lock() {
            *slot = PodSlot::Gone;
        }
        if let Some(pod) = pod {
            pod.shutdown().await;
        }
        self.request_exit();
    }

    /// The running pod, or a newly booted one for the first container.
    async fn pod_for(
        self: &Arc<Self>,
        group: &str,
        req: &CreateTaskRequest,
        spec: &Spec,
    ) -> TaskResult<(Arc<Pod>, bool)> {
        match self.pod.lock().map(|s| match &*s {
            PodSlot::Running(p) => Ok(Some(p.clone())),
            PodSlot::Empty => Ok(None),
            PodSlot::Gone => Err(()),
        }) {
            Ok(Ok(Some(pod))) if pod.id == group => return Ok((pod, false)),
            Ok(Ok(Some(pod))) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {} belongs to pod {group}, but this shim serves pod {}",
                    req.id, pod.id
                )));
            }
            Ok(Ok(None)) if self.sandbox_managed() => {
                return Err(TaskError::FailedPrecondition(format!(
                    "sandbox {group} is not started (StartSandbox comes first)"
                )));
            }
            Ok(Ok(None)) => {}
            _ => {
                return Err(TaskError::FailedPrecondition(
                    "this shim is shutting down".into(),
                ));
            }
        }
        let plan = PodPlan::from_sandbox_spec(group, req, spec)?;
        let pod = self.launcher.launch(&plan, &self.log).await?;
        pod.mark_start(Mark::ShimStarted, Some(self.started));
        let pod = Arc::new(pod);
        if let Ok(mut slot) = self.pod.lock() {
            *slot = PodSlot::Running(pod.clone());
        }
        self.spawn_vm_watchdog(pod.clone());
        self.spawn_oom_watch(pod.clone());
        pod.spawn_volume_sync();
        Ok((pod, true))
    }

    async fn create_in_pod(
        &self,
        pod: &Pod,
        init: &Arc<Process>,
        bundle: &Path,
        req: &CreateTaskRequest,
        spec: Spec,
    ) -> TaskResult<()> {
        let id = init.container_id.as_str();
        let mut spec = spec;
        if let Some(dir) = self.pod_files_dir() {
            crate::sandbox::pod_files::add_mounts(&mut spec, &dir);
        }
        let host_root = spec.root().as_ref().map(|r| bundle.join(r.path()));
        let (guest_json, binds) = guest_spec::for_guest(spec, id, self.sandbox_guest_pid())
            .map_err(TaskError::invalid)?;
        let rootfs = if req.rootfs.is_empty() {
            RootfsSource::Bind(host_root.ok_or_else(|| {
                TaskError::InvalidArgument("no rootfs mounts and no root.path".into())
            })?)
        } else {
            RootfsSource::Mounts(
                req.rootfs
                    .iter()
                    .map(|m| MountSpec {
                        fstype: m.type_.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
            )
        };
        let result = async {
            pod.prepare_container_files(id, rootfs, binds.clone())
                .await
                .map_err(|e| match e {
                    ContainerFilesError::Source(e) => TaskError::invalid(e),
                    e => TaskError::internal("preparing the container's files", e),
                })?;
            pod.watch_volumes(id, &binds);
            let io = ProcessIo::attach(pod.agent.as_ref(), id, "", &init.stdio, &self.log)
                .await
                .map_err(|e| TaskError::internal("attaching stdio", e))?;
            let pid = pod
                .agent
                .create_container(id, guest_json, init.stdio.for_agent())
                .await?;
            init.set_guest_pid(pid);
            init.set_io(io);
            pod.mark_start(Mark::ContainerCreated, None);
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = pod.agent.remove_container(id).await;
            if let Err(e) = pod.remove_container_files(id).await {
                warn!(self.log, "cleaning up container files"; "container" => id, "error" => %e);
            }
        }
        result
    }
}

/// The request's checks before anything is touched: its ids, no checkpoint, a valid bundle.
/// Returns the bundle's spec, the pod it belongs to and whether it is the pod's sandbox.
fn check_create(req: &CreateTaskRequest) -> TaskResult<(Spec, String, bool)> {
    let id = req.id.as_str();
    ids::validate("container id", id).map_err(TaskError::invalid)?;
    if !req.checkpoint.is_empty() {
        return Err(TaskError::Unimplemented(
            "husk cannot restore from a checkpoint".into(),
        ));
    }
    let spec = guest_spec::load(Path::new(&req.bundle)).map_err(TaskError::invalid)?;
    let annotation = |k: &str| spec.annotations().as_ref().and_then(|a| a.get(k)).cloned();
    let group = annotation(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string());
    ids::validate(
        "sandbox id (annotation io.kubernetes.cri.sandbox-id)",
        &group,
    )
    .map_err(TaskError::invalid)?;
    let is_sandbox = annotation(CONTAINER_TYPE_ANNOTATION).as_deref() == Some("sandbox");
    Ok((spec, group, is_sandbox))
}

fn stdio_paths(req: &CreateTaskRequest) -> StdioPaths {
    StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    }
}

fn create_event(req: &CreateTaskRequest, pid: u32) -> TaskCreate {
    let mut ev = TaskCreate::new();
    ev.container_id = req.id.clone();
    ev.bundle = req.bundle.clone();
    ev.rootfs = req.rootfs.clone();
    let mut io = TaskIO::new();
    io.stdin = req.stdin.clone();
    io.stdout = req.stdout.clone();
    io.stderr = req.stderr.clone();
    io.terminal = req.terminal;
    ev.io = MessageField::some(io);
    ev.pid = pid;
    ev
}
