//! CRI PortForward for a VM pod. containerd serves PortForward by dialling
//! `localhost:<port>` from inside the pod's network namespace, where with runc the pod's
//! processes listen. In a husk pod they listen in the VM, so the shim takes every loopback TCP
//! connection of that namespace ([`steer`]) and carries each over vsock to the agent, which
//! connects to the same port on the guest's loopback: a server bound only to `127.0.0.1` in
//! the pod is reached, as with runc.
//!
//! Nothing here parses guest bytes beyond one status byte read with a deadline; each
//! connection is copied with fixed buffers, and at most [`MAX_CONNECTIONS`] are carried at
//! once. Dropping the [`PortForwarder`] ends the steering and every carried connection.

mod bpf;
mod steer;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::port_forward::{Family, ForwardHeader};
use slog::{Logger, debug, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{NetNs, NetworkError};
use crate::agent::client::open_port_forward;
use steer::LoopbackSteering;

/// Forwarded connections carried at once (the agent's own bound is the same).
pub const MAX_CONNECTIONS: usize = husk_protocol::port_forward::MAX_FORWARDS;

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("listening on the pod namespace's loopback: {0}")]
    Listen(#[source] NetworkError),
    #[error(
        "steering the pod namespace's loopback connections to the forwarder (an sk_lookup eBPF program; Linux 5.9 or later with CONFIG_BPF_SYSCALL): {0}"
    )]
    Steer(#[source] std::io::Error),
    #[error("registering the forwarder's listener: {0}")]
    Register(#[source] std::io::Error),
}

/// Carries the pod namespace's loopback connections into the guest while it lives.
pub struct PortForwarder {
    accepting: tokio::task::JoinHandle<()>,
    _steering: LoopbackSteering,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        // Its JoinSet goes with it, and with that every carried connection.
        self.accepting.abort();
    }
}

impl PortForwarder {
    /// Starts forwarding the namespace `netns`'s loopback connections to the agent reached
    /// through the hybrid vsock socket `vsock_uds`.
    pub fn start(
        netns: &NetNs,
        vsock_uds: PathBuf,
        log: &Logger,
    ) -> Result<Self, PortForwardError> {
        let (v4, v6) = netns
            .run_in(|| {
                let v4 = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                // No ::1 when IPv6 is off in the namespace; then nobody can dial it either.
                let v6 = StdListener::bind((Ipv6Addr::LOCALHOST, 0)).ok();
                Ok((v4, v6))
            })
            .map_err(PortForwardError::Listen)?;
        let steering =
            LoopbackSteering::install(netns.as_fd(), v4.as_fd(), v6.as_ref().map(|l| l.as_fd()))
                .map_err(PortForwardError::Steer)?;
        let v4 = tokio_listener(v4)?;
        let v6 = v6.map(tokio_listener).transpose()?;
        let log = log.new(slog::o!("part" => "port-forward"));
        info!(log, "port forwarding ready"; "ipv6" => v6.is_some());
        Ok(Self {
            accepting: tokio::spawn(accept(v4, v6, vsock_uds, log)),
            _steering: steering,
        })
    }
}

fn tokio_listener(l: StdListener) -> Result<TcpListener, PortForwardError> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(PortForwardError::Register)
}

async fn accept(v4: TcpListener, v6: Option<TcpListener>, uds: PathBuf, log: Logger) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let uds = Arc::new(uds);
    let mut carried = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = v4.accept() => r,
            r = async { match &v6 { Some(l) => l.accept().await, None => std::future::pending().await } } => r,
        };
        while carried.try_join_next().is_some() {}
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                warn!(log, "accepting a forwarded connection failed"; "error" => %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(log, "too many forwarded connections; refusing one"; "max" => MAX_CONNECTIONS);
            reset(client);
            continue;
        };
        let (uds, log) = (Arc::clone(&uds), log.clone());
        carried.spawn(async move {
            carry(client, &uds, &log).await;
            drop(slot);
        });
    }
}

/// Carries one connection: the port the client dialled is the accepted socket's own.
async fn carry(mut client: TcpStream, uds: &std::path::Path, log: &Logger) {
    let Ok(dialled) = client.local_addr() else {
        return reset(client);
    };
    let header = ForwardHeader {
        family: match dialled {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        },
        port: dialled.port(),
    };
    let mut guest = match open_port_forward(uds, header).await {
        Ok(s) => s,
        Err(e) => {
            info!(log, "forwarded connection not carried"; "port" => header.port, "error" => %e);
            return reset(client);
        }
    };
    debug!(log, "forwarding a connection"; "port" => header.port);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut guest).await {
        debug!(log, "forwarded connection ended with an error"; "port" => header.port, "error" => %e);
    }
}

/// Closes with a reset, as a refused connection would end for the client.
fn reset(client: TcpStream) {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // With a zero linger time the close that follows sends a reset and returns at once.
    let _ = nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &abort);
}

#[cfg(test)]
mod tests;
