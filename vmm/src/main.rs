//! `husk-vmm`: husk's built-in microVM monitor, and the jail for the other processes a pod
//! runs for its guest. Each mode reads a JSON file the shim wrote (`husk-vmm-config`):
//!
//! - `--config <vm.json>`: run one VM until the guest stops, then exit with a status saying
//!   how it ended (see the crate docs). The guest's serial console goes to
//!   stdout, the monitor's own log to stderr.
//! - `--vsock-backend <backend.json>`: serve the hybrid-vsock device to QEMU over vhost-user
//!   (listener on fd 3), jailed, until QEMU disconnects.
//! - `--exec <exec.json>`: jail this process, then execute the program the file names (QEMU).
//!
//! Usage: `husk-vmm (--config F | --vsock-backend F | --exec F) [--log-level LEVEL]`

use std::io::Write;
use std::path::PathBuf;

use husk_vmm::{builder, jail, vsock_backend};
use husk_vmm_config::{
    BackendConfig, EXIT_SETUP_FAILED, EXIT_USAGE, ExecConfig, LaunchFile, VmConfig,
};
use slog::{Drain, Level, Logger, error, info, o};

fn usage(msg: &str) -> ! {
    eprintln!(
        "husk-vmm: {msg}\nusage: husk-vmm (--config F | --vsock-backend F | --exec F) [--log-level LEVEL]"
    );
    std::process::exit(EXIT_USAGE)
}

enum Mode {
    Vm(PathBuf),
    VsockBackend(PathBuf),
    Exec(PathBuf),
}

fn parse_args() -> (Mode, Level) {
    let mut mode = None;
    let mut level = Level::Info;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some(flag @ ("--config" | "--vsock-backend" | "--exec")) => {
                let Some(file) = args.next().map(PathBuf::from) else {
                    usage(&format!("{flag} needs a file"))
                };
                if mode.is_some() {
                    usage("only one of --config, --vsock-backend, --exec")
                }
                mode = Some(match flag {
                    "--config" => Mode::Vm(file),
                    "--vsock-backend" => Mode::VsockBackend(file),
                    _ => Mode::Exec(file),
                });
            }
            Some("--log-level") => {
                let value = args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .unwrap_or_default();
                level = match value.as_str() {
                    "error" => Level::Error,
                    "warn" => Level::Warning,
                    "info" => Level::Info,
                    "debug" => Level::Debug,
                    other => usage(&format!("unknown log level {other:?}")),
                };
            }
            Some("--help") | Some("-h") => usage("runs one husk pod VM"),
            _ => usage(&format!("unexpected argument {arg:?}")),
        }
    }
    match mode {
        Some(m) => (m, level),
        None => usage("one of --config, --vsock-backend, --exec is required"),
    }
}

fn logger(level: Level) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    // No timestamps: the shim stamps every line it forwards to the pod log.
    let drain = slog_term::FullFormat::new(decorator)
        .use_custom_timestamp(|_| Ok(()))
        .build()
        .fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

fn main() {
    let (mode, level) = parse_args();
    let log = logger(level);
    match mode {
        Mode::Vm(path) => run_vm(&path, log),
        Mode::VsockBackend(path) => run_vsock_backend(&path, log),
        Mode::Exec(path) => exec_jailed(&path, &log),
    }
}

/// Serves QEMU's vsock device; exits 0 when QEMU disconnected.
fn run_vsock_backend(path: &std::path::Path, log: Logger) -> ! {
    let outcome = BackendConfig::from_file(path)
        .map_err(vsock_backend::BackendError::from)
        .and_then(|config| {
            let log = log.new(o!("vm" => config.name.clone()));
            vsock_backend::run(&config, &log)
        });
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            error!(log, "vsock backend failed"; "error" => %e);
            std::process::exit(EXIT_SETUP_FAILED)
        }
    }
}

/// Returns only on failure (the program replaced this process).
fn exec_jailed(path: &std::path::Path, log: &Logger) -> ! {
    match ExecConfig::from_file(path) {
        Ok(config) => {
            let Err(e) = jail::exec::run(&config);
            error!(log, "cannot start the program in its jail"; "error" => %e);
        }
        Err(e) => error!(log, "cannot start the program in its jail"; "error" => %e),
    }
    std::process::exit(EXIT_SETUP_FAILED)
}

fn run_vm(config_path: &std::path::Path, log: Logger) -> ! {
    let config = match VmConfig::from_file(config_path) {
        Ok(c) => c,
        Err(e) => {
            error!(log, "cannot start the VM"; "error" => %e);
            std::process::exit(EXIT_SETUP_FAILED);
        }
    };
    let log = log.new(o!("vm" => config.name.clone()));
    // Before anything reads guest data: the jail. Paths in the config are host paths; the
    // VM is built from the ones inside the jail.
    let config = match &config.jail {
        Some(jail_config) => match jail::enter_vm(&config, jail_config) {
            Ok(inner) => inner,
            Err(e) => {
                error!(log, "cannot confine the monitor"; "error" => %e);
                std::process::exit(EXIT_SETUP_FAILED);
            }
        },
        None => config,
    };
    // The machine is never dropped: the process exit below ends it (see `Machine::run`).
    let mut machine = None;
    let outcome =
        builder::build(&config, std::io::stdout(), &log).and_then(|m| machine.insert(m).run());
    let code = match outcome {
        Ok(reason) => {
            info!(log, "VM stopped"; "reason" => &reason.description, "status" => reason.code);
            reason.code
        }
        Err(e) => {
            error!(log, "cannot run the VM"; "error" => %e);
            EXIT_SETUP_FAILED
        }
    };
    let _ = std::io::stdout().flush();
    // vCPU threads are still inside KVM_RUN: exiting the process ends them.
    std::process::exit(code);
}
