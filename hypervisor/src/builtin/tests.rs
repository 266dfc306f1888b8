//! The husk-vmm launcher: the VM description it writes, its errors, and its child's life.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::spec::{SharedFsSpec, VsockSpec, preferred_kernel};
use husk_vmm_config::EXIT_SETUP_FAILED;

fn spec(dir: &Path) -> VmSpec {
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    VmSpec {
        name: "pod".into(),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_params: " husk.log=debug ".into(),
        vcpus: 2,
        memory_mib: 256,
        run_dir: dir.to_path_buf(),
        vsock: VsockSpec {
            guest_cid: 3,
            uds_path: dir.join("vm/vsock.sock"),
        },
        shared_fs: SharedFsSpec {
            tag: "husk".into(),
            shared_dir: dir.to_path_buf(),
            virtiofsd: script(dir, "virtiofsd", "sleep 30"),
            cache: "auto".into(),
        },
        vmm_ids: crate::IdRange {
            first: 1_000_000,
            count: 16,
            lock_dir: dir.join("ids"),
        },
        net: Vec::new(),
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn vm_config_follows_the_spec_and_prefers_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let fs = dir.path().join("fs.sock");
    let c = BuiltinVmm::vm_config(&s, &fs).unwrap();
    c.validate().unwrap();
    assert_eq!(c.kernel, s.kernel, "no vmlinux beside it yet");
    assert_eq!(
        c.cmdline,
        format!("{BASE_CMDLINE} virtio_mmio.queue_num_max=256 husk.log=debug")
    );
    assert_eq!((c.vcpus, c.memory_mib), (2, 256));
    assert_eq!(c.vsock.unwrap().uds_path, s.vsock.uds_path);
    assert_eq!(
        c.fs.unwrap(),
        FsConfig {
            socket: fs.clone(),
            tag: "husk".into()
        }
    );

    let bzimage = dir.path().join("vmlinuz");
    assert_eq!(preferred_kernel(&bzimage), bzimage, "no vmlinux to prefer");
    std::fs::write(dir.path().join("vmlinux"), "").unwrap();
    let c = BuiltinVmm::vm_config(&s, &fs).unwrap();
    assert_eq!(c.kernel, dir.path().join("vmlinux"));
    assert_eq!(preferred_kernel(&bzimage), dir.path().join("vmlinux"));
}

#[test]
fn missing_binary_is_a_clear_error() {
    let err = BuiltinVmm::new("/nonexistent/husk-vmm")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/husk-vmm"), "{err}");
    assert!(BuiltinVmm::new("no-such-husk-vmm-binary").is_err());
}

#[test]
fn exit_statuses_are_explained() {
    use std::os::unix::process::ExitStatusExt;
    let s = describe_status_of(0);
    assert!(s.contains("status 0") && s.contains("guest stopped"), "{s}");
    assert!(describe_status_of(EXIT_SETUP_FAILED).contains("could not be started"));
    assert!(exit_status::describe_status(std::process::ExitStatus::from_raw(9)).contains("killed"));
}

fn describe_status_of(code: i32) -> String {
    use std::os::unix::process::ExitStatusExt;
    exit_status::describe_status(std::process::ExitStatus::from_raw(code << 8))
}

#[tokio::test]
async fn launch_runs_the_monitor_with_its_config_and_reports_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let out = dir.path().join("args");
    let vmm = script(
        dir.path(),
        "husk-vmm",
        &format!(
            "echo \"$@\" > {}; cat \"$2\" >> {}; exit 0",
            out.display(),
            out.display()
        ),
    );
    let backend = BuiltinVmm::new(vmm.to_str().unwrap()).unwrap();
    assert_eq!(backend.name(), "builtin");
    let log = Logger::root(slog::Discard, slog::o!());
    let handle = backend.launch(&s, &log).await.unwrap();
    let mut exited = handle.exited();
    let exit = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    assert!(exit.description.contains("guest stopped"), "{exit:?}");
    assert!(!exit.requested);
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.starts_with("--config "), "{written}");
    assert!(written.contains("\"uds_path\""), "{written}");
    let roles: Vec<String> = handle.processes().into_iter().map(|(r, _)| r).collect();
    assert_eq!(roles, ["husk-vmm", "virtiofsd"]);
    handle.stop(Duration::from_millis(100)).await;
    assert!(!dir.path().join(CONFIG_FILE).exists());
}

#[tokio::test]
async fn stop_kills_a_monitor_that_does_not_end_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let vmm = script(dir.path(), "husk-vmm", "exec sleep 30");
    let backend = BuiltinVmm::new(vmm.to_str().unwrap()).unwrap();
    let log = Logger::root(slog::Discard, slog::o!());
    let handle = backend.launch(&s, &log).await.unwrap();
    assert!(handle.pid() > 0);
    handle.stop(Duration::from_millis(50)).await;
    let exit = handle
        .exited()
        .borrow()
        .clone()
        .expect("known right after stop");
    assert!(exit.requested);
    assert!(exit.description.contains("killed"), "{exit:?}");
}
