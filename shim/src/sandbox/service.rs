//! The ttrpc `containerd.runtime.sandbox.v1.Sandbox` service: decodes requests, calls into
//! the shim's Sandbox API operations, encodes replies.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::{Sandbox, create_sandbox};
use slog::debug;
use ttrpc::asynchronous::{Service, TtrpcContext};

use crate::task::Shim;

type R<T> = ttrpc::Result<T>;

/// The Sandbox service, registered beside the Task service.
pub fn sandbox_services(shim: Arc<Shim>) -> HashMap<String, Service> {
    create_sandbox(Arc::new(SandboxService { shim }))
}

struct SandboxService {
    shim: Arc<Shim>,
}

/// containerd's name of this machine's architecture (GOARCH).
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> R<CreateSandboxResponse> {
        debug!(self.shim.log, "CreateSandbox"; "id" => &req.sandbox_id, "netns" => &req.netns_path);
        self.shim.create_sandbox(&req).await?;
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        req: StartSandboxRequest,
    ) -> R<StartSandboxResponse> {
        let (pid, created_at) = self.shim.start_sandbox(&req.sandbox_id).await?;
        let mut r = StartSandboxResponse::new();
        r.pid = pid;
        r.created_at = MessageField::some(created_at);
        Ok(r)
    }

    async fn platform(&self, _: &TtrpcContext, req: PlatformRequest) -> R<PlatformResponse> {
        self.shim.sandbox_status(&req.sandbox_id, false)?;
        let mut r = PlatformResponse::new();
        // The generated types of the platform and metric are reachable only through their
        // fields.
        let p = r.platform.mut_or_insert_default();
        p.os = "linux".into();
        p.architecture = architecture().into();
        Ok(r)
    }

    async fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        req: StopSandboxRequest,
    ) -> R<StopSandboxResponse> {
        debug!(self.shim.log, "StopSandbox"; "id" => &req.sandbox_id, "timeout_secs" => req.timeout_secs);
        self.shim.stop_sandbox(&req.sandbox_id).await?;
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        req: WaitSandboxRequest,
    ) -> R<WaitSandboxResponse> {
        let exit = self.shim.wait_sandbox(&req.sandbox_id).await?;
        let mut r = WaitSandboxResponse::new();
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(exit.at);
        Ok(r)
    }

    async fn sandbox_status(
        &self,
        _: &TtrpcContext,
        req: SandboxStatusRequest,
    ) -> R<SandboxStatusResponse> {
        let s = self.shim.sandbox_status(&req.sandbox_id, req.verbose)?;
        let mut r = SandboxStatusResponse::new();
        r.sandbox_id = req.sandbox_id;
        r.pid = s.pid;
        r.state = s.state.into();
        r.created_at = MessageField::some(s.created_at);
        r.exited_at = s.exited_at.into();
        r.info = s.info;
        Ok(r)
    }

    async fn ping_sandbox(&self, _: &TtrpcContext, req: PingRequest) -> R<PingResponse> {
        self.shim.ping_sandbox(&req.sandbox_id)?;
        Ok(PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        req: ShutdownSandboxRequest,
    ) -> R<ShutdownSandboxResponse> {
        debug!(self.shim.log, "ShutdownSandbox"; "id" => &req.sandbox_id);
        self.shim.shutdown_sandbox(&req.sandbox_id).await?;
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        req: SandboxMetricsRequest,
    ) -> R<SandboxMetricsResponse> {
        let data = self.shim.sandbox_metrics(&req.sandbox_id).await?;
        let mut r = SandboxMetricsResponse::new();
        let m = r.metrics.mut_or_insert_default();
        m.timestamp = MessageField::some(crate::events::now());
        m.id = req.sandbox_id;
        m.data = MessageField::some(data);
        Ok(r)
    }
}
