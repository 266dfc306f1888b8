//! Runs husk's hybrid-vsock device as a vhost-user backend, for manual tests with QEMU:
//!
//! ```text
//! cargo run -p husk-vsock --example vsock_backend -- <vhost.sock> <uds_path> [guest_cid]
//! qemu-system-x86_64 ... -chardev socket,id=vs,path=<vhost.sock> \
//!     -device vhost-user-vsock-pci,chardev=vs
//! ```
//!
//! Exits when QEMU disconnects. `HUSK_VSOCK_DEBUG=1` logs at debug level.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use husk_vsock::{VhostUserVsock, VhostUserVsockConfig};
use slog::{Drain, Level, Logger, o};

const DEFAULT_GUEST_CID: u64 = 3;
/// How often the example checks whether QEMU went away.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(vhost_socket), Some(uds_path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: vsock_backend <vhost.sock> <uds_path> [guest_cid]");
        return ExitCode::FAILURE;
    };
    let guest_cid = match args.get(2).map(|cid| cid.parse::<u64>()) {
        None => DEFAULT_GUEST_CID,
        Some(Ok(cid)) => cid,
        Some(Err(e)) => {
            eprintln!("bad guest CID: {e}");
            return ExitCode::FAILURE;
        }
    };
    let level = if std::env::var_os("HUSK_VSOCK_DEBUG").is_some() {
        Level::Debug
    } else {
        Level::Info
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator)
        .build()
        .filter_level(level)
        .fuse();
    let log = Logger::root(drain, o!());

    let _ = std::fs::remove_file(vhost_socket);
    let listener = match UnixListener::bind(vhost_socket) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot bind {vhost_socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = VhostUserVsockConfig {
        guest_cid,
        uds_path: PathBuf::from(uds_path),
        leave_socket_file: false,
    };
    let vsock = match VhostUserVsock::start(config, listener, log) {
        Ok(vsock) => vsock,
        Err(e) => {
            eprintln!("cannot start the vsock device: {e}");
            return ExitCode::FAILURE;
        }
    };
    while !vsock.is_finished() {
        std::thread::sleep(POLL_INTERVAL);
    }
    vsock.stop();
    let _ = std::fs::remove_file(vhost_socket);
    ExitCode::SUCCESS
}
