//! The ttrpc `Task` service: decodes requests, calls into [`Shim`], encodes replies.
//! Registered as both `containerd.task.v2.Task` (containerd 1.6/1.7) and
//! `containerd.task.v3.Task` (containerd 2.x): the messages are identical.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::{Task, create_task};
use slog::debug;
use ttrpc::asynchronous::{Service, TtrpcContext};

use super::Shim;
use super::error::TaskError;

const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

/// The task service under both names containerd dials.
pub fn task_services(shim: Arc<Shim>) -> HashMap<String, Service> {
    let service = Arc::new(TaskService { shim });
    let mut services = create_task(service.clone());
    if let Some(v3) = create_task(service).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    services
}

struct TaskService {
    shim: Arc<Shim>,
}

type R<T> = ttrpc::Result<T>;

fn unimplemented<T>(what: &str) -> R<T> {
    Err(TaskError::Unimplemented(format!("{what} is not supported by husk yet")).into())
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> R<StateResponse> {
        Ok(self.shim.state(&req.id, &req.exec_id)?)
    }

    async fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> R<CreateTaskResponse> {
        debug!(self.shim.log, "create"; "id" => &req.id, "bundle" => &req.bundle);
        let pid = self.shim.create(&req).await?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> R<StartResponse> {
        let pid = self.shim.start(&req.id, &req.exec_id).await?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> R<DeleteResponse> {
        let info = self.shim.delete(&req.id, &req.exec_id).await?;
        let mut r = DeleteResponse::new();
        r.pid = info.pid;
        r.exit_status = info.exit_status;
        r.exited_at = MessageField::some(info.exited_at);
        Ok(r)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> R<PidsResponse> {
        let mut r = PidsResponse::new();
        r.processes = self.shim.pids(&req.id).await?;
        Ok(r)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> R<Empty> {
        debug!(self.shim.log, "pause"; "id" => &req.id);
        self.shim.set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> R<Empty> {
        debug!(self.shim.log, "resume"; "id" => &req.id);
        self.shim.set_paused(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> R<Empty> {
        unimplemented("Checkpoint")
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> R<Empty> {
        debug!(self.shim.log, "kill"; "id" => &req.id, "exec" => &req.exec_id, "signal" => req.signal);
        self.shim
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        self.shim.exec(&req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        self.shim
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> R<Empty> {
        if req.stdin {
            self.shim.close_io(&req.id, &req.exec_id).await?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> R<Empty> {
        debug!(self.shim.log, "update"; "id" => &req.id);
        self.shim.update(&req.id, req.resources.as_ref()).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> R<WaitResponse> {
        let (exit_status, exited_at) = self.shim.wait(&req.id, &req.exec_id).await?;
        let mut r = WaitResponse::new();
        r.exit_status = exit_status;
        r.exited_at = MessageField::some(exited_at);
        Ok(r)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> R<StatsResponse> {
        let mut r = StatsResponse::new();
        r.stats = MessageField::some(self.shim.stats(&req.id).await?);
        Ok(r)
    }

    async fn connect(&self, _: &TtrpcContext, _: ConnectRequest) -> R<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.shim.vmm_pid();
        r.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> R<Empty> {
        let shim = self.shim.clone();
        // Exits only when no container is left; the reply goes out first.
        tokio::spawn(async move { shim.shutdown_if_idle().await });
        Ok(Empty::new())
    }
}
