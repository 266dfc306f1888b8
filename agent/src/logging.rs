//! The agent's slog logger: plain text on the console (stderr), filtered by level.
//!
//! The serial console is slow under emulation, so the default level is `info` and the agent
//! logs one line per lifecycle event at most; per-chunk IO never logs above `trace`. Lines are
//! stamped with the guest uptime, which is what boot measurements need.

use slog::{Drain, Level, Logger, o};

/// Builds a synchronous logger writing to stderr at `level` and above.
pub fn console_logger(level: Level) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator)
        .use_custom_timestamp(|w| {
            let uptime = crate::guest_info::uptime().unwrap_or_default();
            write!(w, "[{:>5}.{:03}]", uptime.as_secs(), uptime.subsec_millis())
        })
        .build()
        .filter_level(level)
        .fuse();
    Logger::root(drain, o!())
}
