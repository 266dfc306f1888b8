//! A blocking CRI client over containerd's socket, the way kubelet talks to it: the
//! `runtime.v1` gRPC API of the `k8s-cri` crate on tonic, over the Unix socket. Every
//! call has a deadline; a call that does not answer in time is an error naming the call
//! (a hang is a failure, never a stuck test).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AttachRequest, Container, ContainerConfig, ContainerFilter, ContainerStats,
    ContainerStatsFilter, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    ImageStatusRequest, LinuxContainerResources, ListContainerStatsRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxStats,
    PodSandboxStatsRequest, PodSandboxStatusRequest, PodSandboxStatusResponse, PortForwardRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, ReopenContainerLogRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, VersionRequest, VersionResponse,
};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint, Uri};

/// Deadline of a call that may boot a VM or wait for one (RunPodSandbox, CreateContainer,
/// StartContainer, StopPodSandbox...). QEMU/TCG boots take seconds; a loaded 2-core CI
/// machine running two tests takes more.
pub const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of a quick query (status, list, version).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// What a call that waits for the container (StopContainer, ExecSync) gets on top of the
/// time it asks containerd to wait.
pub const WAIT_SLACK: Duration = Duration::from_secs(60);
/// Large enough for ExecSync's captured output (containerd caps it at 16 MiB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A failed CRI call.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The runtime answered with an error.
    #[error("CRI {call} failed: {code:?}: {message}")]
    Status {
        /// The RPC.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// No answer within the deadline.
    #[error("CRI {call} did not answer within {after:?}")]
    Timeout {
        /// The RPC.
        call: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// Connecting to the socket failed.
    #[error("connecting to the CRI socket {socket}: {message}")]
    Connect {
        /// The socket.
        socket: String,
        /// What failed.
        message: String,
    },
    /// The answer lacked a field the call needs.
    #[error("CRI {call} answered without {field}")]
    Incomplete {
        /// The RPC.
        call: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

impl CriError {
    /// The gRPC code of a runtime error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CriError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result of a CRI call.
pub type CriResult<T> = Result<T, CriError>;

/// A connection to one containerd's CRI service.
#[derive(Debug)]
pub struct CriClient {
    rt: Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI service on containerd's gRPC socket.
    pub fn connect(socket: &Path) -> CriResult<Self> {
        let connect_err = |message: String| CriError::Connect {
            socket: socket.display().to_string(),
            message,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| connect_err(format!("starting a tokio runtime: {e}")))?;
        let path = socket.to_owned();
        let channel = rt.block_on(async {
            let endpoint = Endpoint::try_from("http://[::]:50051")
                .map_err(|e| connect_err(e.to_string()))?
                .connect_timeout(QUERY_TIMEOUT);
            let connect =
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
            tokio::time::timeout(QUERY_TIMEOUT, connect)
                .await
                .map_err(|_| connect_err(format!("no connection within {QUERY_TIMEOUT:?}")))?
                .map_err(|e| connect_err(e.to_string()))
        })?;
        let runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let images = ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        Ok(Self {
            rt,
            runtime,
            images,
        })
    }

    /// Runs `fut` (a call named `call`) on this client's runtime with a deadline.
    fn call<T, F>(&self, call: &'static str, after: Duration, fut: F) -> CriResult<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .rt
            .block_on(async move { tokio::time::timeout(after, fut).await })
        {
            Err(_) => Err(CriError::Timeout { call, after }),
            Ok(Err(status)) => Err(CriError::Status {
                call,
                code: status.code(),
                message: status.message().to_owned(),
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Runs any future (e.g. a streaming session) on this client's runtime.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// `Version`.
    pub fn version(&self) -> CriResult<VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", QUERY_TIMEOUT, async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// `ImageStatus`: whether CRI sees `image` (its id if so).
    pub fn image_id(&self, image: &str) -> CriResult<Option<String>> {
        let mut c = self.images.clone();
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self.call("ImageStatus", QUERY_TIMEOUT, async move {
            c.image_status(req).await
        })?;
        Ok(r.image.map(|i| i.id))
    }

    /// `RunPodSandbox` with `runtime_handler`; returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig, handler: &str) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let r = self.call("RunPodSandbox", LIFECYCLE_TIMEOUT, async move {
            c.run_pod_sandbox(req).await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", LIFECYCLE_TIMEOUT, async move {
            c.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", LIFECYCLE_TIMEOUT, async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `PodSandboxStatus` (`verbose` adds containerd's `info` JSON).
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> CriResult<PodSandboxStatusResponse> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        };
        self.call("PodSandboxStatus", QUERY_TIMEOUT, async move {
            c.pod_sandbox_status(req).await
        })
    }

    /// `ListPodSandbox`.
    pub fn list_pod_sandbox(&self, filter: Option<PodSandboxFilter>) -> CriResult<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        let req = ListPodSandboxRequest { filter };
        let r = self.call("ListPodSandbox", QUERY_TIMEOUT, async move {
            c.list_pod_sandbox(req).await
        })?;
        Ok(r.items)
    }

    /// `CreateContainer` in sandbox `pod` (created from `sandbox_config`); returns its id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let r = self.call("CreateContainer", LIFECYCLE_TIMEOUT, async move {
            c.create_container(req).await
        })?;
        Ok(r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", LIFECYCLE_TIMEOUT, async move {
            c.start_container(req).await
        })
        .map(drop)
    }

    /// `StopContainer` with a grace period of `grace_secs` (SIGTERM, then SIGKILL).
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: grace_secs,
        };
        let grace = Duration::from_secs(u64::try_from(grace_secs).unwrap_or(0));
        self.call("StopContainer", grace + WAIT_SLACK, async move {
            c.stop_container(req).await
        })
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", LIFECYCLE_TIMEOUT, async move {
            c.remove_container(req).await
        })
        .map(drop)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> CriResult<ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self.call("ContainerStatus", QUERY_TIMEOUT, async move {
            c.container_status(req).await
        })?;
        r.status.ok_or(CriError::Incomplete {
            call: "ContainerStatus",
            field: "status",
        })
    }

    /// `Attach`: the streaming URL on containerd's stream server.
    pub fn attach(&self, req: &AttachRequest) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = req.clone();
        let r = self.call("Attach", QUERY_TIMEOUT, async move { c.attach(req).await })?;
        Ok(r.url)
    }

    /// `ReopenContainerLog`.
    pub fn reopen_container_log(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = ReopenContainerLogRequest {
            container_id: id.into(),
        };
        self.call("ReopenContainerLog", QUERY_TIMEOUT, async move {
            c.reopen_container_log(req).await
        })
        .map(drop)
    }

    /// `UpdateContainerResources`.
    pub fn update_container_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.call("UpdateContainerResources", LIFECYCLE_TIMEOUT, async move {
            c.update_container_resources(req).await
        })
        .map(drop)
    }

    /// `ContainerStats`.
    pub fn container_stats(&self, id: &str) -> CriResult<ContainerStats> {
        let mut c = self.runtime.clone();
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        let r = self.call("ContainerStats", QUERY_TIMEOUT, async move {
            c.container_stats(req).await
        })?;
        r.stats.ok_or(CriError::Incomplete {
            call: "ContainerStats",
            field: "stats",
        })
    }

    /// `ListContainerStats`.
    pub fn list_container_stats(
        &self,
        filter: Option<ContainerStatsFilter>,
    ) -> CriResult<Vec<ContainerStats>> {
        let mut c = self.runtime.clone();
        let req = ListContainerStatsRequest { filter };
        let r = self.call("ListContainerStats", QUERY_TIMEOUT, async move {
            c.list_container_stats(req).await
        })?;
        Ok(r.stats)
    }

    /// `PodSandboxStats`.
    pub fn pod_sandbox_stats(&self, id: &str) -> CriResult<PodSandboxStats> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        };
        let r = self.call("PodSandboxStats", QUERY_TIMEOUT, async move {
            c.pod_sandbox_stats(req).await
        })?;
        r.stats.ok_or(CriError::Incomplete {
            call: "PodSandboxStats",
            field: "stats",
        })
    }

    /// `ListContainers`.
    pub fn list_containers(&self, filter: Option<ContainerFilter>) -> CriResult<Vec<Container>> {
        let mut c = self.runtime.clone();
        let req = ListContainersRequest { filter };
        let r = self.call("ListContainers", QUERY_TIMEOUT, async move {
            c.list_containers(req).await
        })?;
        Ok(r.containers)
    }

    /// `ExecSync` of `cmd` in container `id`; `timeout_secs` 0 means no timeout (the call
    /// deadline is then [`LIFECYCLE_TIMEOUT`]).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> CriResult<ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: timeout_secs,
        };
        let after = match u64::try_from(timeout_secs) {
            Ok(s) if s > 0 => Duration::from_secs(s) + WAIT_SLACK,
            _ => LIFECYCLE_TIMEOUT,
        };
        self.call("ExecSync", after, async move { c.exec_sync(req).await })
    }

    /// `Exec`: the streaming URL on containerd's stream server.
    pub fn exec(&self, req: &ExecRequest) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = req.clone();
        let r = self.call("Exec", QUERY_TIMEOUT, async move { c.exec(req).await })?;
        Ok(r.url)
    }

    /// `PortForward`: the streaming URL on containerd's stream server.
    pub fn port_forward(&self, pod_id: &str, ports: &[i32]) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: ports.to_vec(),
        };
        let r = self.call("PortForward", QUERY_TIMEOUT, async move {
            c.port_forward(req).await
        })?;
        Ok(r.url)
    }
}
