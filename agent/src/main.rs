//! `husk-agent`: PID 1 of a husk pod VM (or, with a hidden argument, the short-lived helper
//! that creates container processes, see `husk_agent::helper`, or the pod's pause process,
//! see `husk_agent::pause`).

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use husk_agent::container::{Containers, Layout};
use husk_agent::reaper::{ExitRegistry, Reaper};
use husk_agent::sandbox::Sandbox;
use husk_agent::server::Listeners;
use husk_agent::service::AgentService;
use husk_agent::stdio::StreamRegistry;
use husk_agent::{cmdline, guest_info, helper, init, logging, pause};
use slog::{Level, Logger, info, warn};

/// Tokio workers: the pumps and RPCs are IO-bound and guests are small.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    if std::env::args().nth(1).as_deref() == Some(pause::PAUSE_ARG) {
        // PID 1 of the pod's PID namespace, not of the VM: the pod's pause process.
        return ExitCode::from(u8::try_from(pause::run()).unwrap_or(1));
    }
    if !pid1 && std::env::args().nth(1).as_deref() == Some(helper::HELPER_ARG) {
        // Errors travel back over the helper socket when it still works; the exit code is
        // all that is left otherwise.
        return match helper::child::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    if !pid1 {
        eprintln!("husk-agent is the init (PID 1) of a husk guest VM; it does not run elsewhere");
        return ExitCode::from(2);
    }
    match run_init() {
        Ok(never) => match never {},
        Err(e) => {
            // Last resort: PID 1 exiting panics the kernel, and `panic=-1` ends the VM.
            eprintln!("husk-agent: fatal: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line; our errors already quote their source, so repeats are dropped.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn run_init() -> Result<Infallible> {
    let init_us = guest_info::uptime_us().unwrap_or_default();
    let started_ms = init_us / 1000;
    init::prepare_guest().context("preparing the guest")?;
    let cmdline = std::fs::read_to_string(cmdline::PROC_CMDLINE).unwrap_or_default();
    let level = cmdline::log_level(&cmdline);
    let log = logging::console_logger(
        level
            .as_ref()
            .ok()
            .copied()
            .flatten()
            .unwrap_or(Level::Info),
    );
    if let Err(e) = &level {
        warn!(log, "ignoring husk.log"; "error" => %e);
    }
    info!(log, "agent starting"; "uptime_ms" => started_ms);
    let reporting = std::path::Path::new(init::page_reporting::ORDER_PARAM);
    if let Err(e) = init::page_reporting::set_order(reporting, init::page_reporting::ORDER) {
        warn!(log, "free page reporting stays at the kernel's order"; "error" => %e);
    }
    match init::mounts::enable_cgroup_controllers(std::path::Path::new(init::mounts::CGROUP_ROOT)) {
        Ok(refused) if refused.is_empty() => {}
        Ok(refused) => {
            warn!(log, "cgroup controllers not delegated"; "controllers" => refused.join(" "))
        }
        Err(e) => warn!(log, "cgroup v2 unavailable"; "error" => %e),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(serve(init_us, log))
}

async fn serve(init_us: u64, log: Logger) -> Result<Infallible> {
    // The reaper first: no child may exit unseen.
    let exits = Arc::new(ExitRegistry::default());
    let reaper = Reaper::install(Arc::clone(&exits), log.new(slog::o!("part" => "reaper")))
        .context("installing the reaper")?;
    tokio::spawn(reaper.run());

    let layout = Layout::guest();
    layout
        .create_dirs()
        .context("creating the agent's directories")?;
    let shared_dir = layout.shared_dir.clone();
    let streams = Arc::new(StreamRegistry::default());
    let containers = Arc::new(Containers::new(
        layout,
        exits,
        Arc::clone(&streams),
        log.new(slog::o!("part" => "containers")),
    ));
    let sandbox = Arc::new(Sandbox::new(shared_dir, log.clone()));

    let listeners = Listeners::bind().context("binding the vsock ports")?;
    let serving_ms = guest_info::uptime_ms().context("reading the uptime")?;
    let service = Arc::new(AgentService::new(
        containers,
        sandbox,
        guest_info::BootTimes {
            init_us,
            serving_ms,
        },
        log.clone(),
    ));
    let _server = listeners
        .serve(service, streams, log.new(slog::o!("part" => "io")))
        .await
        .context("starting the servers")?;
    info!(log, "agent serving"; "uptime_ms" => serving_ms, "init_uptime_us" => init_us);
    mark_boot_timer(&log);
    std::future::pending().await
}

/// Signals the monitor's boot-timer device, when the monitor announced one.
fn mark_boot_timer(log: &Logger) {
    let cmdline = std::fs::read_to_string(cmdline::PROC_CMDLINE).unwrap_or_default();
    let marked = husk_agent::boot_timer::address(&cmdline)
        .and_then(|addr| addr.map_or(Ok(()), husk_agent::boot_timer::signal_ready));
    if let Err(e) = marked {
        warn!(log, "boot timer not signalled"; "error" => %e);
    }
}
