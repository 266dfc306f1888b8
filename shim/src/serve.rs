//! The serving daemon `start` spawned: the task API (and containerd 2.x's Sandbox API) on
//! the socket inherited as fd 3, until
//! the pod is gone or containerd/systemd asks us to stop.

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use slog::{Logger, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::Args;
use crate::events::Publisher;
use crate::isolation;
use crate::pod_launch::VmLauncher;
use crate::sandbox::service::sandbox_services;
use crate::task::{Shim, task_services};

/// containerd passes the listening socket as fd 3.
const LISTENER_FD: i32 = husk_hypervisor::fd_passing::INHERITED_FD;
/// Time for the last replies and events to go out before the process exits.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_GRACE: Duration = Duration::from_millis(100);
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

pub fn run(args: &Args) -> Result<()> {
    let bundle = std::env::current_dir().context("reading the bundle directory (cwd)")?;
    let log = crate::logger::daemon_logger(&bundle, args.debug);
    // SAFETY: fd 3 is the listening socket `start` handed over; nothing else in this process
    // owns or closes it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) };
    let socket = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .unwrap_or_default();
    // Both need a single-threaded process: before the runtime starts.
    let _guard = isolation::spawn_socket_guard(&socket).context("starting the socket guard")?;
    isolation::enter_private_mount_namespace().context("isolating the pod's mounts")?;
    // One thread: the shim is mostly idle, and child processes must be spawned from a thread
    // that lives as long as they do (their parent-death signal is tied to it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, std_listener, socket, log.clone()));
    // Don't wait for stray blocking work (a stuck fifo open, say): the pod is already down.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    if let Err(e) = &result {
        warn!(log, "shim failed"; "error" => format!("{e:#}"));
    }
    result
}

async fn serve(
    args: &Args,
    std_listener: std::os::unix::net::UnixListener,
    socket: PathBuf,
    log: Logger,
) -> Result<()> {
    let listener = ttrpc::asynchronous::transport::Listener::try_from(std_listener)
        .context("using the inherited shim socket (fd 3)")?;
    let (publisher, publisher_task) = Publisher::spawn(
        std::env::var("TTRPC_ADDRESS").ok(),
        args.namespace.clone(),
        log.clone(),
    );
    let shim = Shim::with_config_path(
        args.namespace.clone(),
        socket.clone(),
        publisher,
        Arc::new(VmLauncher),
        Some(args.config_path.clone()).filter(|p| !p.is_empty()),
        log.clone(),
    );
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(listener)
        .register_service(task_services(shim.clone()))
        .register_service(sandbox_services(shim.clone()));
    server.start().await.context("starting the ttrpc server")?;
    info!(log, "shim serving"; "socket" => %socket.display(), "namespace" => &args.namespace, "pid" => std::process::id());

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut exit = shim.exit_requested();
    tokio::select! {
        _ = exit.wait_for(|e| *e) => info!(log, "pod gone; shim exiting"),
        _ = term.recv() => { info!(log, "SIGTERM: stopping the pod"); shim.shutdown_all().await }
        _ = int.recv() => { info!(log, "SIGINT: stopping the pod"); shim.shutdown_all().await }
    }
    // Let the reply that triggered the exit leave before the server goes away.
    tokio::time::sleep(REPLY_GRACE).await;
    shim.publisher.flush(FLUSH_TIMEOUT).await;
    // Not `server.shutdown()`: it waits for containerd to hang up, which it need not do.
    server.stop_listen().await;
    publisher_task.abort();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
