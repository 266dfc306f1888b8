//! `husk-vmm`: husk's built-in microVM monitor. Runs one VM described by a JSON file (written
//! by the shim's `builtin` backend) until the guest stops, then exits with a status saying how
//! it ended (see `husk_hypervisor::builtin`). The guest's serial console goes to stdout, the
//! monitor's own log to stderr.
//!
//! Usage: `husk-vmm --config <vm.json> [--log-level error|warn|info|debug]`

use std::io::Write;
use std::path::PathBuf;

use husk_hypervisor::builtin::{EXIT_SETUP_FAILED, EXIT_USAGE, VmConfig, builder, jail};
use slog::{Drain, Level, Logger, error, info, o};

fn usage(msg: &str) -> ! {
    eprintln!("husk-vmm: {msg}\nusage: husk-vmm --config <vm.json> [--log-level LEVEL]");
    std::process::exit(EXIT_USAGE)
}

fn parse_args() -> (PathBuf, Level) {
    let mut config = None;
    let mut level = Level::Info;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => config = args.next().map(PathBuf::from),
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
    match config {
        Some(c) => (c, level),
        None => usage("--config is required"),
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
    let (config_path, level) = parse_args();
    let log = logger(level);
    let config = match VmConfig::from_file(&config_path) {
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
        Some(jail_config) => match jail::enter(&config, jail_config) {
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
