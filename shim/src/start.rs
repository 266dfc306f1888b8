//! The `start` verb: containerd runs it once per container (cwd = bundle) and expects the
//! address of the shim that will serve it on stdout. Containers of one pod (same
//! `io.kubernetes.cri.sandbox-id`) share one shim and therefore one VM; a container without
//! that annotation is a pod of its own.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use sha2::{Digest, Sha256};

use crate::args::Args;

/// Where containerd (and its runc shim) put shim sockets.
const SOCKET_DIR: &str = "/run/containerd/s";
/// Annotation CRI sets on every container of a pod, naming the pod's sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// containerd's runtime options are a few hundred bytes.
const MAX_OPTIONS_BYTES: u64 = 1024 * 1024;
/// File in the bundle holding the shim address (containerd reads it when it restarts).
const ADDRESS_FILE: &str = "address";

pub fn run(args: &Args) -> Result<()> {
    let bundle = std::env::current_dir().context("reading the bundle directory (cwd)")?;
    let mut args = args.clone();
    args.config_path = read_options_config_path(std::io::stdin().lock());
    let group = grouping_id(&bundle, &args.id);
    let socket = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", socket.display());

    let listener = loop {
        if UnixStream::connect(&socket).is_ok() {
            // The pod's shim is already serving.
            return announce(&bundle, &address);
        }
        // Nobody answers: a stale socket from a dead shim, or none at all.
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing stale shim socket {socket:?}"));
            }
        }
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        }
        match UnixListener::bind(&socket) {
            Ok(l) => break l,
            // Another `start` of the same pod won the race; use its shim.
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding shim socket {socket:?}")),
        }
    };
    if let Err(e) = spawn_daemon(&args, &bundle, &listener) {
        let _ = std::fs::remove_file(&socket);
        return Err(e);
    }
    announce(&bundle, &address)
}

/// containerd writes the runtime options (a protobuf `Any`) to `start`'s stdin. A Sandbox
/// API pod hears of them nowhere else, so their `ConfigPath` goes to the daemon. Options
/// that do not decode, or are larger than any real ones, are ignored like any other
/// runtime's options; a terminal on stdin (a person running `start`) is not read.
fn read_options_config_path(stdin: impl Read + AsFd) -> String {
    if std::io::IsTerminal::is_terminal(&stdin.as_fd()) {
        return String::new();
    }
    let mut bytes = Vec::new();
    if stdin
        .take(MAX_OPTIONS_BYTES + 1)
        .read_to_end(&mut bytes)
        .is_err()
        || bytes.len() as u64 > MAX_OPTIONS_BYTES
    {
        return String::new();
    }
    Any::parse_from_bytes(&bytes)
        .ok()
        .and_then(|any| crate::runtime_options::config_path(Some(&any)))
        .unwrap_or_default()
}

fn announce(bundle: &Path, address: &str) -> Result<()> {
    std::fs::write(bundle.join(ADDRESS_FILE), address)
        .with_context(|| format!("writing {ADDRESS_FILE} in the bundle {bundle:?}"))?;
    print!("{address}");
    Ok(())
}

fn spawn_daemon(args: &Args, bundle: &Path, listener: &UnixListener) -> Result<()> {
    let exe = std::env::current_exe().context("locating the shim binary")?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args.daemon_flags())
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs between fork and exec; setsid and the fd move are async-signal-safe and
    // only touch the child's own session and descriptors.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: the daemon must survive containerd's process group being signalled.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // containerd's convention: the listening socket is fd 3.
            husk_hypervisor::fd_passing::inherit_as_fd3(fd)
        });
    }
    let child = cmd.spawn().context("starting the shim daemon")?;
    if child.id() == 0 {
        bail!("shim daemon has no pid");
    }
    Ok(())
}

/// The pod a container belongs to: its sandbox id annotation, else itself.
pub fn grouping_id(bundle: &Path, id: &str) -> String {
    sandbox_id_annotation(bundle).unwrap_or_else(|| id.to_string())
}

fn sandbox_id_annotation(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
    let id = spec
        .get("annotations")?
        .get(SANDBOX_ID_ANNOTATION)?
        .as_str()?;
    (!id.is_empty()).then(|| id.to_string())
}

/// Same scheme as containerd's runc shim: sha256 of `<address>/<namespace>/<group>`.
pub fn socket_path(containerd_address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{containerd_address}/{namespace}/{group}").as_bytes());
    Path::new(SOCKET_DIR).join(hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_sandbox_annotation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(grouping_id(d.path(), "c1"), "c1");
        std::fs::write(
            d.path().join("config.json"),
            format!(r#"{{"annotations":{{"{SANDBOX_ID_ANNOTATION}":"pod9"}}}}"#),
        )
        .unwrap();
        assert_eq!(grouping_id(d.path(), "c1"), "pod9");
        std::fs::write(d.path().join("config.json"), "not json").unwrap();
        assert_eq!(grouping_id(d.path(), "c1"), "c1");
    }

    #[test]
    fn reads_the_config_path_of_the_runtime_options_on_stdin() {
        let mut options = husk_protocol::runtimeoptions::Options::new();
        options.config_path = "/etc/husk/other.toml".into();
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = options.write_to_bytes().unwrap();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("stdin");
        std::fs::write(&path, any.write_to_bytes().unwrap()).unwrap();
        let read = |p: &Path| read_options_config_path(std::fs::File::open(p).unwrap());
        assert_eq!(read(&path), "/etc/husk/other.toml");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(&path), "", "no options");
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        assert_eq!(read(&path), "", "options that do not decode");
    }

    #[test]
    fn socket_path_depends_on_all_parts() {
        let a = socket_path("/run/containerd/containerd.sock", "default", "p");
        assert!(a.starts_with(SOCKET_DIR));
        assert_ne!(
            a,
            socket_path("/run/containerd/containerd.sock", "other", "p")
        );
        assert_ne!(a, socket_path("/other.sock", "default", "p"));
        // Unix socket paths must stay below 108 bytes.
        assert!(a.as_os_str().len() < 108);
    }
}
