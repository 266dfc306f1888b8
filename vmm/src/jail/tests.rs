//! The jail and the seccomp filters, applied in a re-executed child and attacked there.

use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::seccomp::{self, ThreadKind};
use husk_vmm_config::{FsConfig, LaunchFile, VsockConfig};

/// Set in the re-executed test binary that jails itself: `<vcpu|device>:<attack>`.
const PROBE_ENV: &str = "HUSK_JAIL_PROBE";
/// The probe's scratch directory (jail root, socket directory, host canaries).
const DIR_ENV: &str = "HUSK_JAIL_DIR";
const PROBE_TEST: &str = "jail::tests::a_jailed_thread_under_its_filter_reaches_nothing";

fn config(dir: &Path) -> (VmConfig, JailConfig) {
    let jail = JailConfig {
        root: dir.join("root"),
        sockets: dir.join("sockets"),
        uid: 4_000_000_000 - std::process::id(),
        gid: 4_000_000_000 - std::process::id(),
    };
    let vm = VmConfig {
        name: "probe".into(),
        kernel: dir.join("kernel"),
        initrd: None,
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 64,
        vsock: None,
        fs: None,
        net: Vec::new(),
        jail: Some(jail.clone()),
    };
    (vm, jail)
}

#[test]
fn paths_inside_the_jail() {
    let (mut vm, jail) = config(Path::new("/state/pod"));
    vm.initrd = Some("/usr/share/husk/initrd.img".into());
    vm.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: jail.sockets.join("vsock.sock"),
    });
    vm.fs = Some(FsConfig {
        socket: jail.sockets.join("virtiofsd.sock"),
        tag: "husk".into(),
    });
    vm.validate().unwrap();
    let inner = inside(&vm);
    assert_eq!(inner.kernel, PathBuf::from(KERNEL_PATH));
    assert_eq!(inner.initrd, Some(PathBuf::from(INITRD_PATH)));
    assert_eq!(
        inner.vsock.unwrap().uds_path,
        PathBuf::from("/run/vsock.sock")
    );
    assert_eq!(
        inner.fs.unwrap().socket,
        PathBuf::from("/run/virtiofsd.sock")
    );
    assert!(inner.jail.is_none());
}

/// Taps arrive as descriptors: the jail keeps them, needs no `/dev/net/tun` and keeps a
/// network namespace of its own.
#[test]
fn taps_are_inherited_not_opened() {
    let (mut vm, _) = config(Path::new("/state/pod"));
    for (fd, name) in [(3, "eth0"), (4, "eth1")] {
        vm.net.push(husk_vmm_config::NetConfig {
            name: name.into(),
            fd,
            mac: [2, 0, 0, 0, 0, 1],
        });
    }
    let contents = vm_contents(&vm);
    assert_eq!(contents.inherited_fds, 2);
    assert!(!contents.host_network);
    assert_eq!(contents.devices, [PathBuf::from(KVM_DEVICE)]);
}

/// The re-executed child: jail, filter, then one attack. Prints what it sees.
fn child(probe: &str, dir: &Path) {
    let (kind, attack) = probe.split_once(':').unwrap();
    let kind = match kind {
        "vcpu" => ThreadKind::Vcpu,
        "backend" => ThreadKind::VsockBackend,
        _ => ThreadKind::Device,
    };
    let (vm, jail) = config(dir);
    if kind == ThreadKind::VsockBackend {
        let contents = Contents {
            threads: 8,
            ..Contents::default()
        };
        enter(&jail, &contents).unwrap();
    } else {
        enter_vm(&vm, &jail).unwrap();
    }
    let mut root: Vec<_> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    println!("root: {}", root.join(" "));
    println!("uid: {}", nix::unistd::getuid());
    if kind == ThreadKind::VsockBackend {
        seccomp::install_all_threads(kind).unwrap();
    } else {
        seccomp::install(kind).unwrap();
    }
    println!("filter installed");
    let host_socket = dir.join("host.sock");
    match attack {
        "unlink" => println!("returned {:?}", std::fs::remove_file("/run/victim")),
        "connect" => println!("returned {:?}", UnixStream::connect(&host_socket)),
        // A file every kind of jail shows: only the filter can stop this.
        "open" => println!("returned {:?}", std::fs::File::open("/run/victim")),
        "execve" => {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argv/envp arrays of C strings that outlive the call.
            let rc = unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
            println!("returned {}", raw(i64::from(rc)));
        }
        // The backend's threads are allowed; a new process is not.
        "thread" => println!(
            "thread: {:?}",
            std::thread::spawn(|| std::thread::current().id())
                .join()
                .is_ok()
        ),
        "fork" => {
            // SAFETY: the child only exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(0) };
            }
            println!("returned {}", raw(i64::from(pid)));
        }
        "ptrace" => {
            // SAFETY: PTRACE_TRACEME takes no pointers.
            let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            println!("returned {}", raw(rc));
        }
        _ => {}
    }
    println!("still alive");
}

/// A raw syscall's result as the probe reports it: negative is a refusal.
fn raw(rc: i64) -> String {
    if rc < 0 {
        format!("Err({})", std::io::Error::last_os_error())
    } else {
        format!("Ok({rc})")
    }
}

fn probe(dir: &Path, what: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", PROBE_TEST, "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, what)
        .env(DIR_ENV, dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

/// Needs root (the jail mounts, creates a device node and switches ids), as the whole
/// suite does.
#[test]
fn a_jailed_thread_under_its_filter_reaches_nothing() {
    if let (Ok(p), Ok(d)) = (std::env::var(PROBE_ENV), std::env::var(DIR_ENV)) {
        return child(&p, Path::new(&d));
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    for d in ["root", "sockets"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("kernel"), "not a kernel").unwrap();
    std::fs::write(dir.join("sockets/victim"), "").unwrap();
    let host = UnixListener::bind(dir.join("host.sock")).unwrap();
    host.set_nonblocking(true).unwrap();
    for kind in ["vcpu", "device", "backend"] {
        let (status, out) = probe(dir, &format!("{kind}:nothing"));
        assert!(status.success(), "{kind}: {status:?}: {out}");
        let root = if kind == "backend" {
            "root: run\n"
        } else {
            "root: boot dev run\n"
        };
        assert!(out.contains(root), "{kind}: {out}");
        assert!(!out.contains("uid: 0\n"), "{kind}: {out}");
        assert!(out.contains("still alive"), "{kind}: {out}");
        for attack in ["unlink", "connect", "open", "execve", "ptrace", "fork"] {
            let (status, out) = probe(dir, &format!("{kind}:{attack}"));
            assert!(out.contains("filter installed"), "{kind}:{attack}: {out}");
            let killed = status.signal() == Some(libc::SIGSYS) && !out.contains("still alive");
            // The filter kills on any call outside the allowlist. Only `connect` may be
            // allowed (the device thread forwards guest connections to the pod's sockets);
            // then the jail stops it: the host socket is not in the jail's root.
            let refused = attack == "connect" && out.contains("returned Err");
            assert!(killed || refused, "{kind}:{attack}: {status:?}: {out}");
        }
    }
    let (status, out) = probe(dir, "backend:thread");
    assert!(
        status.success() && out.contains("thread: true") && out.contains("still alive"),
        "the backend cannot start threads: {status:?}: {out}"
    );
    assert!(dir.join("sockets/victim").exists(), "unlink got through");
    assert!(host.accept().is_err(), "a connect reached the host socket");
    assert_eq!(
        std::fs::read_dir(dir.join("root")).unwrap().count(),
        0,
        "the jail root left something on the host"
    );
}
