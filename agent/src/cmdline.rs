//! Reads the agent's settings from the kernel command line (`/proc/cmdline`).

use slog::Level;
use thiserror::Error;

/// Where the kernel publishes its command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("unknown log level {0:?} (expected critical, error, warning, info, debug or trace)")]
    UnknownLevel(String),
}

/// The value of the last `key=value` word on the command line (the kernel lets later words
/// override earlier ones, and so do we).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// The log level asked for with `husk.log=`; `Ok(None)` when the key is absent.
pub fn log_level(cmdline: &str) -> Result<Option<Level>, CmdlineError> {
    let Some(raw) = value(cmdline, husk_protocol::LOG_LEVEL_CMDLINE_KEY) else {
        return Ok(None);
    };
    let level = match raw.to_ascii_lowercase().as_str() {
        "critical" | "crit" => Level::Critical,
        "error" => Level::Error,
        "warning" | "warn" => Level::Warning,
        "info" => Level::Info,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        _ => return Err(CmdlineError::UnknownLevel(raw.to_owned())),
    };
    Ok(Some(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_last_value_of_key() {
        let line = "console=ttyS0 husk.log=info quiet husk.log=debug panic=-1\n";
        assert_eq!(value(line, "husk.log"), Some("debug"));
        assert_eq!(value(line, "panic"), Some("-1"));
        assert_eq!(value(line, "quiet"), None);
        assert_eq!(value(line, "missing"), None);
    }

    #[test]
    fn parses_levels() {
        assert_eq!(log_level("husk.log=DEBUG"), Ok(Some(Level::Debug)));
        assert_eq!(log_level("husk.log=warn"), Ok(Some(Level::Warning)));
        assert_eq!(log_level("console=ttyS0"), Ok(None));
        assert_eq!(
            log_level("husk.log=loud"),
            Err(CmdlineError::UnknownLevel("loud".into()))
        );
    }
}
