//! Shim logging. The serving daemon writes to the `log` fifo containerd opens in the bundle
//! directory (containerd copies it into its own log); writes never block — when containerd
//! is not draining the fifo, lines are dropped rather than stalling the pod.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use slog::{Drain, Level, Logger, o};

/// Name of the fifo containerd creates in the bundle for shim logs.
const LOG_FIFO: &str = "log";

pub fn daemon_logger(bundle: &Path, debug: bool) -> Logger {
    let fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(bundle.join(LOG_FIFO));
    match fifo {
        Ok(f) => build(f, debug),
        Err(_) => stderr_logger(debug),
    }
}

pub fn stderr_logger(debug: bool) -> Logger {
    build(std::io::stderr(), debug)
}

fn build<W: Write + Send + 'static>(w: W, debug: bool) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(w);
    let drain = slog_term::FullFormat::new(decorator)
        .use_original_order()
        .build()
        .ignore_res();
    let level = if debug { Level::Debug } else { Level::Info };
    Logger::root(
        slog::LevelFilter::new(drain, level).ignore_res(),
        o!("runtime" => "husk"),
    )
}
