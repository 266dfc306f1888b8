//! Volumes of a CRI pod behave in the guest as kubelet's volumes do under runc: an emptyDir
//! on disk shared by the pod's containers, an in-memory emptyDir whose sizeLimit holds,
//! hostPath files and directories (read-only too, and through a symlink), subPath mounts,
//! `/dev/shm` with its size, and the `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`
//! that containerd writes for the pod. On containerd 1.6 and 2.x.

mod cri_common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cri_common::{exec_ok, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::{DnsConfig, Mount};

/// The in-memory emptyDir's sizeLimit, in KiB.
const MEMORY_LIMIT_KIB: u64 = 8 * 1024;
/// containerd's default `/dev/shm` size for a pod, in KiB.
const SHM_KIB: u64 = 64 * 1024;

/// The host side of the pod's volumes, as kubelet lays them out.
struct Volumes {
    empty_dir: PathBuf,
    memory: PathBuf,
    host_file: PathBuf,
    host_dir: PathBuf,
    host_link: PathBuf,
}

impl Volumes {
    fn create(base: &Path) -> Result<Self> {
        let v = Volumes {
            empty_dir: base.join("empty-dir"),
            memory: base.join("memory"),
            host_file: base.join("host-file"),
            host_dir: base.join("host-dir"),
            host_link: base.join("host-link"),
        };
        std::fs::create_dir_all(v.empty_dir.join("sub"))?;
        std::fs::write(v.empty_dir.join("sub/from-host"), "sub\n")?;
        std::fs::write(v.empty_dir.join("file"), "subfile\n")?;
        std::fs::create_dir_all(&v.memory)?;
        // kubelet's in-memory emptyDir: a tmpfs of sizeLimit.
        nix::mount::mount(
            Some("tmpfs"),
            &v.memory,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={MEMORY_LIMIT_KIB}k,mode=0777").as_str()),
        )
        .context("mounting the memory emptyDir's tmpfs")?;
        std::fs::write(&v.host_file, "host file\n")?;
        std::fs::create_dir_all(&v.host_dir)?;
        std::fs::write(v.host_dir.join("f"), "host dir\n")?;
        std::os::unix::fs::symlink(&v.host_dir, &v.host_link)?;
        Ok(v)
    }
}

fn mount(container_path: &str, host_path: &Path, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    }
}

fn run(w: &CriWorld, id: &str, script: &str) -> Result<String> {
    Ok(exec_ok(w.client(), id, &["sh", "-c", script])?
        .trim()
        .to_owned())
}

/// `script` fails in container `id`; returns its stderr.
fn fails(w: &CriWorld, id: &str, script: &str) -> Result<String> {
    let out = w.client().exec_sync(id, &["sh", "-c", script], 0)?;
    ensure!(
        out.exit_code != 0,
        "{script:?} succeeded in {id}: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The total size of the file system at `path` in container `id`, in KiB.
fn size_kib(w: &CriWorld, id: &str, path: &str) -> Result<u64> {
    let out = run(w, id, &format!("df -k {path} | tail -n 1"))?;
    out.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("df of {path}: {out:?}"))
}

fn volumes(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-volumes", flavour)?;
    let v = Volumes::create(&w.dir().join("volumes"))?;
    let mut cfg = w.pod_config("volumes")?;
    cfg.dns_config = Some(DnsConfig {
        servers: vec!["192.0.2.53".into()],
        searches: vec!["husk-test.svc.example".into()],
        options: vec!["ndots:3".into()],
    });
    let pod = w.run_pod_with(&cfg)?;

    let mut writer = specs::container_config("writer", &["sleep", "100000"]);
    writer.mounts = vec![
        mount("/empty", &v.empty_dir, false),
        mount("/memory", &v.memory, false),
        mount("/etc/host-file", &v.host_file, true),
        mount("/host-dir", &v.host_dir, false),
        mount("/host-dir-ro", &v.host_dir, true),
        mount("/host-link", &v.host_link, false),
        // subPath: kubelet binds the path inside the volume.
        mount("/sub", &v.empty_dir.join("sub"), false),
        mount("/subfile", &v.empty_dir.join("file"), true),
    ];
    let writer = w.create_container(&pod, &writer, &cfg)?;
    w.client().start_container(&writer)?;
    let mut reader = specs::container_config("reader", &["sleep", "100000"]);
    reader.mounts = vec![mount("/empty", &v.empty_dir, false)];
    let reader = w.create_container(&pod, &reader, &cfg)?;
    w.client().start_container(&reader)?;

    // emptyDir on disk: what one container writes, the other and the host read.
    run(&w, &writer, "echo shared > /empty/hello")?;
    let read = run(&w, &reader, "cat /empty/hello")?;
    ensure!(read == "shared", "the reader sees {read:?}");
    let on_host = std::fs::read_to_string(v.empty_dir.join("hello"))?;
    ensure!(on_host == "shared\n", "the host sees {on_host:?}");

    // In memory, with its sizeLimit.
    let size = size_kib(&w, &writer, "/memory")?;
    ensure!(
        size == MEMORY_LIMIT_KIB,
        "the memory emptyDir is {size} KiB, not its sizeLimit {MEMORY_LIMIT_KIB} KiB"
    );
    let err = fails(
        &w,
        &writer,
        "dd if=/dev/zero of=/memory/big bs=1M count=16 >/dev/null",
    )?;
    ensure!(
        err.contains("No space left"),
        "writing past the sizeLimit: {err:?}"
    );

    // hostPath: a file read-only, a directory read-write and read-only, through a symlink.
    ensure!(run(&w, &writer, "cat /etc/host-file")? == "host file");
    fails(&w, &writer, "echo x > /etc/host-file")?;
    run(&w, &writer, "echo written > /host-dir/g")?;
    ensure!(std::fs::read_to_string(v.host_dir.join("g"))? == "written\n");
    ensure!(run(&w, &writer, "cat /host-dir-ro/g")? == "written");
    fails(&w, &writer, "echo x > /host-dir-ro/h")?;
    ensure!(run(&w, &writer, "cat /host-link/f")? == "host dir");

    // subPath: only the path inside the volume, writable where the mount is.
    let listed = run(&w, &writer, "ls /sub")?;
    ensure!(listed == "from-host", "/sub holds {listed:?}");
    run(&w, &writer, "echo up > /sub/from-container")?;
    ensure!(std::fs::read_to_string(v.empty_dir.join("sub/from-container"))? == "up\n");
    ensure!(run(&w, &writer, "cat /subfile")? == "subfile");

    // /dev/shm: the pod's, with its size, shared by the pod's containers.
    let shm = size_kib(&w, &writer, "/dev/shm")?;
    ensure!(shm == SHM_KIB, "/dev/shm is {shm} KiB, not {SHM_KIB}");
    run(&w, &writer, "echo seg > /dev/shm/seg")?;
    ensure!(run(&w, &reader, "cat /dev/shm/seg")? == "seg");

    // The files containerd writes for the pod.
    let hostname = run(&w, &writer, "cat /etc/hostname; hostname")?;
    ensure!(hostname == "volumes\nvolumes", "hostname: {hostname:?}");
    let resolv = run(&w, &writer, "cat /etc/resolv.conf")?;
    for wanted in [
        "nameserver 192.0.2.53",
        "search husk-test.svc.example",
        "options ndots:3",
    ] {
        ensure!(
            resolv.contains(wanted),
            "resolv.conf lacks {wanted:?}: {resolv}"
        );
    }
    let hosts = run(&w, &writer, "cat /etc/hosts")?;
    ensure!(hosts.contains("localhost"), "/etc/hosts: {hosts}");

    stop_and_remove_pod(&w, &pod)?;
    nix::mount::umount(&v.memory).context("unmounting the memory emptyDir")?;
    w.finish()?;
    Ok(())
}

#[test]
fn volumes_on_containerd_1_6() -> Result<()> {
    volumes(ContainerdFlavour::System)
}

#[test]
fn volumes_on_containerd_2() -> Result<()> {
    volumes(ContainerdFlavour::V2)
}

#[test]
fn volumes_on_containerd_2_sandbox_api() -> Result<()> {
    volumes(ContainerdFlavour::V2SandboxApi)
}
