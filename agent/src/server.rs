//! The agent's vsock listeners: ttrpc on [`AGENT_VSOCK_PORT`], stdio streams on
//! [`IO_VSOCK_PORT`], forwarded TCP connections on [`FORWARD_VSOCK_PORT`].

use std::sync::Arc;

use husk_protocol::agent_ttrpc::{Agent, create_agent};
use husk_protocol::{AGENT_VSOCK_PORT, FORWARD_VSOCK_PORT, IO_VSOCK_PORT};
use slog::{Logger, warn};
use thiserror::Error;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener, VsockStream};
use ttrpc::r#async::Server;
use ttrpc::r#async::transport::Listener;

use crate::container::HostStream;
use crate::stdio::{StreamRegistry, attach};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("listening on vsock port {port}: {source}")]
    Bind { port: u32, source: std::io::Error },
    #[error("starting the ttrpc server: {0}")]
    Start(#[source] ttrpc::Error),
}

/// Bound, not yet serving.
pub struct Listeners {
    rpc: VsockListener,
    io: VsockListener,
    forward: VsockListener,
}

impl Listeners {
    pub fn bind() -> Result<Self, ServerError> {
        let bind = |port| {
            VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
                .map_err(|source| ServerError::Bind { port, source })
        };
        Ok(Self {
            rpc: bind(AGENT_VSOCK_PORT)?,
            io: bind(IO_VSOCK_PORT)?,
            forward: bind(FORWARD_VSOCK_PORT)?,
        })
    }

    /// Serves all ports; the returned server must be kept alive.
    pub async fn serve(
        self,
        service: Arc<dyn Agent + Send + Sync>,
        streams: Arc<StreamRegistry<HostStream>>,
        log: Logger,
    ) -> Result<Server, ServerError> {
        let mut server = Server::new()
            .add_listener(Listener::from(self.rpc))
            .register_service(create_agent(service));
        server.start().await.map_err(ServerError::Start)?;
        tokio::spawn(attach::serve(self.io, streams, log.clone()));
        tokio::spawn(crate::port_forward::serve(self.forward, log));
        Ok(server)
    }
}

/// Accepts connections on `listener` forever, each served by a task `serve` makes. A failed
/// accept (typically EMFILE) is logged and retried after a pause, never in a spin.
pub async fn accept_each<F, Fut>(
    listener: VsockListener,
    what: &'static str,
    log: Logger,
    mut serve: F,
) where
    F: FnMut(VsockStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                warn!(log, "accepting a connection failed"; "port" => what, "error" => %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
