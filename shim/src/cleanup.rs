//! The `delete` verb: containerd runs it (cwd = bundle) when a shim is gone, to clean up
//! after it, and expects a DeleteResponse on stdout.
//!
//! A dead shim's VMM and virtiofsd died with it (parent-death signal) and its mounts and
//! state files with its private mount namespace (see `isolation`); what can remain is its
//! ttrpc socket, if the socket guard did not get to it, and the pod's host cgroup. Both are
//! removed here, unless a live shim still answers on the socket (containers of a pod share
//! one shim).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use slog::{info, warn};

use crate::args::Args;
use crate::config::{Config, JailSettings, RuntimeConfig};
use crate::pod_cgroup;
use crate::start::{grouping_id, socket_path};

/// Exit status reported for a container whose shim died (as if SIGKILLed).
const DEAD_SHIM_EXIT_STATUS: u32 = 137;
/// How long a shim's socket must keep answering for `delete` to leave the pod alone.
const DYING_SHIM_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub fn run(args: &Args) -> Result<()> {
    let bundle = if args.bundle.is_empty() {
        std::env::current_dir().context("reading the bundle directory (cwd)")?
    } else {
        PathBuf::from(&args.bundle)
    };
    let log = crate::logger::stderr_logger(args.debug);
    let group = grouping_id(&bundle, &args.id);
    let socket = socket_path(&args.address, &args.namespace, &group);
    if still_serving(&socket) {
        warn!(log, "the pod's shim is still serving; leaving its socket"; "socket" => %socket.display());
    } else {
        if remove_dead_socket(&socket) {
            info!(log, "removed the socket of a dead shim"; "socket" => %socket.display());
        }
        // The pod's cgroup goes with its sandbox container, and so does a monitor id the
        // dead shim could not release.
        if group == args.id {
            remove_pod_cgroup(&bundle, &group, &log);
            let locks = Config::resolve(None)
                .map(|(c, _)| c.hypervisor.jail.id_lock_dir)
                .unwrap_or_else(|_| JailSettings::default().id_lock_dir);
            let swept = husk_hypervisor::vmm_ids::sweep_stale(&locks);
            if swept > 0 {
                info!(log, "removed monitor id claims of dead shims"; "count" => swept);
            }
        }
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

/// The sandbox's shim died: its pod cgroup may still exist (empty, or with a helper that
/// outlived it). Best effort: what cannot be removed is logged.
fn remove_pod_cgroup(bundle: &Path, sandbox_id: &str, log: &slog::Logger) {
    let cgroups_path = std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|spec| {
            spec.pointer("/linux/cgroupsPath")
                .and_then(|p| p.as_str().map(str::to_string))
        });
    let parent = Config::resolve(None)
        .map(|(c, _)| c.runtime.cgroup_parent)
        .unwrap_or_else(|_| RuntimeConfig::default().cgroup_parent);
    let removed = pod_cgroup::path_for(cgroups_path.as_deref(), &parent, sandbox_id)
        .and_then(|path| pod_cgroup::remove_leftover(&path).map(|gone| (path, gone)));
    match removed {
        Ok((path, true)) => info!(log, "removed the pod cgroup of a dead shim"; "cgroup" => path),
        Ok((_, false)) => {}
        Err(e) => warn!(log, "removing the pod cgroup of a dead shim"; "error" => %e),
    }
}

/// Whether a live shim answers on `socket`. containerd runs `delete` right after the shim
/// disconnected, when a killed shim may still be closing its descriptors: its listener can
/// accept for a few more milliseconds. Only a listener that keeps answering counts.
fn still_serving(socket: &Path) -> bool {
    let deadline = std::time::Instant::now() + DYING_SHIM_GRACE;
    loop {
        if !socket.exists() || UnixStream::connect(socket).is_err() {
            return false;
        }
        if std::time::Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes `socket` if it exists and nothing answers on it.
fn remove_dead_socket(socket: &Path) -> bool {
    socket.exists() && UnixStream::connect(socket).is_err() && std::fs::remove_file(socket).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_dead_sockets() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(!remove_dead_socket(&live));
        assert!(live.exists());
        let dead = d.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        assert!(remove_dead_socket(&dead));
        assert!(!dead.exists());
        assert!(!remove_dead_socket(&d.path().join("missing.sock")));
    }
}
