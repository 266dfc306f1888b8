//! The `delete` verb: containerd runs it (cwd = bundle) when a shim is gone, to clean up
//! after it. It unmounts the container's files, and if the pod's shim is dead, stops what is
//! left of the pod (VMM, virtiofsd), removes its state and socket. It then prints a
//! DeleteResponse for containerd.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use slog::{Logger, info, warn};

use crate::args::Args;
use crate::config::Config;
use crate::pod_dir::PodDir;
use crate::start::grouping_id;

/// File in the bundle naming the pod directory, written at Create.
pub const POD_DIR_FILE: &str = "husk-pod";
/// Exit status reported for a container whose shim died (as if SIGKILLed).
const DEAD_SHIM_EXIT_STATUS: u32 = 137;

pub fn run(args: &Args) -> Result<()> {
    let bundle = if args.bundle.is_empty() {
        std::env::current_dir().context("reading the bundle directory (cwd)")?
    } else {
        PathBuf::from(&args.bundle)
    };
    let log = crate::logger::stderr_logger(args.debug);
    let dir = pod_dir(&bundle, &args.id);
    if let Err(e) = dir.remove_container(&args.id) {
        warn!(log, "unmounting container files"; "container" => &args.id, "error" => %e);
    }
    if dir.root().exists() && !shim_alive(&dir) {
        stop_dead_pod(&dir, &log);
    }
    let mut r = DeleteResponse::new();
    r.exit_status = DEAD_SHIM_EXIT_STATUS;
    r.exited_at = MessageField::some(crate::events::now());
    let bytes = r.write_to_bytes().context("encoding the delete response")?;
    std::io::stdout()
        .write_all(&bytes)
        .context("writing the delete response")?;
    Ok(())
}

fn pod_dir(bundle: &Path, id: &str) -> PodDir {
    if let Ok(root) = std::fs::read_to_string(bundle.join(POD_DIR_FILE)) {
        let root = PathBuf::from(root.trim());
        if let (Some(parent), Some(name)) = (root.parent(), root.file_name()) {
            return PodDir::new(parent, &name.to_string_lossy());
        }
    }
    let state_dir = Config::resolve(None)
        .map(|(c, _)| c.runtime.state_dir)
        .unwrap_or_else(|_| "/run/husk".into());
    PodDir::new(&state_dir, &grouping_id(bundle, id))
}

fn shim_alive(dir: &PodDir) -> bool {
    dir.read_record().is_some_and(|r| {
        !r.shim_socket.as_os_str().is_empty() && UnixStream::connect(&r.shim_socket).is_ok()
    })
}

/// Kills the dead pod's processes (only those whose command line names this pod's
/// directory: pids may have been reused), then removes its state.
fn stop_dead_pod(dir: &PodDir, log: &Logger) {
    if let Some(record) = dir.read_record() {
        for (role, pid) in &record.processes {
            if process_belongs_to(*pid, dir.root()) {
                info!(log, "killing process of a dead pod"; "role" => role, "pid" => pid);
                if let Ok(pid) = i32::try_from(*pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_file(&record.shim_socket);
    }
    if let Err(e) = dir.destroy() {
        warn!(log, "removing the pod directory"; "dir" => %dir.root().display(), "error" => %e);
    }
}

fn process_belongs_to(pid: u32, pod_root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = pod_root.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dir_comes_from_the_bundle_record() {
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join(POD_DIR_FILE), "/run/husk/pod7\n").unwrap();
        assert_eq!(pod_dir(b.path(), "c").root(), Path::new("/run/husk/pod7"));
    }

    #[test]
    fn only_processes_naming_the_pod_are_ours() {
        let me = std::process::id();
        assert!(!process_belongs_to(
            me,
            Path::new("/run/husk/definitely-not-this")
        ));
        assert!(!process_belongs_to(u32::MAX, Path::new("/")));
    }
}
