//! Volumes that change after the container started: a configMap-style volume (kubelet's
//! atomic `..data` swap) shows a host-side update in the guest within seconds and an
//! inotify watcher in the container sees it; mount propagation `rslave` brings a mount
//! made on the host under the volume into the container, `rprivate` does not, and
//! `rshared` carries a mount one container makes to the pod's other containers. On
//! containerd 1.6 and 2.x.

mod cri_common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_common::{exec_ok, stop_and_remove_pod, wait_until};
use husk_tests::ContainerdFlavour;
use husk_tests::atomic_writer::AtomicVolume;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::{ContainerConfig, Mount, MountPropagation};
use nix::mount::MsFlags;

/// How soon a host-side change must show in the guest ("within a few seconds").
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

fn mount(container_path: &str, host_path: &Path, propagation: MountPropagation) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

fn run(w: &CriWorld, id: &str, script: &str) -> Result<String> {
    Ok(exec_ok(w.client(), id, &["sh", "-c", script])?
        .trim()
        .to_owned())
}

fn host_mount(fstype: &str, target: &Path, flags: MsFlags) -> Result<()> {
    let source = (fstype != "bind").then_some(fstype);
    nix::mount::mount(
        if fstype == "bind" { Some(target) } else { None },
        target,
        source,
        flags,
        None::<&str>,
    )
    .with_context(|| format!("mounting {fstype} on {}", target.display()))
}

/// What husk logged about volumes, for a failure's message.
fn volume_log(w: &CriWorld) -> String {
    let lines: Vec<String> = w
        .log_text()
        .lines()
        .filter(|l| l.contains("volume") || l.contains("Volume"))
        .map(str::to_owned)
        .collect();
    format!("husk's volume log lines:\n{}", lines.join("\n"))
}

fn privileged(mut cfg: ContainerConfig) -> ContainerConfig {
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
    }
    cfg
}

fn updates(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-volume-updates", flavour)?;
    // kubelet's own directory is a shared mount, as propagation needs.
    let base = w.dir().join("volumes");
    std::fs::create_dir_all(&base)?;
    host_mount("bind", &base, MsFlags::MS_BIND)?;
    host_mount("none", &base, MsFlags::MS_SHARED)?;
    let mut config = AtomicVolume::create(&base.join("config"), &[("key", "v1")])?;
    let (slave, private, shared) = (
        base.join("slave"),
        base.join("private"),
        base.join("shared"),
    );
    for d in [&slave, &private, &shared] {
        std::fs::create_dir_all(d.join("later"))?;
    }

    let mut cfg = w.pod_config("updates")?;
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
    }
    let pod = w.run_pod_with(&cfg)?;
    // An application's watcher: on the directory, as configMap reloaders watch it.
    let script = "husk-inotify-probe /config > /tmp/events & exec sleep 100000";
    let mut watcher = privileged(specs::container_config("watcher", &["sh", "-c", script]));
    let probe = husk_tests::Artifacts::from_env()?.inotify_probe();
    watcher.mounts = vec![
        Mount {
            readonly: true,
            ..mount(
                "/usr/bin/husk-inotify-probe",
                &probe,
                MountPropagation::PropagationPrivate,
            )
        },
        Mount {
            readonly: true,
            ..mount(
                "/config",
                config.dir(),
                MountPropagation::PropagationPrivate,
            )
        },
        mount(
            "/slave",
            &slave,
            MountPropagation::PropagationHostToContainer,
        ),
        mount("/private", &private, MountPropagation::PropagationPrivate),
        mount(
            "/shared",
            &shared,
            MountPropagation::PropagationBidirectional,
        ),
    ];
    let watcher = w.create_container(&pod, &watcher, &cfg)?;
    w.client().start_container(&watcher)?;
    let mut peer = privileged(specs::container_config("peer", &["sleep", "100000"]));
    peer.mounts = vec![mount(
        "/shared",
        &shared,
        MountPropagation::PropagationBidirectional,
    )];
    let peer = w.create_container(&pod, &peer, &cfg)?;
    w.client().start_container(&peer)?;

    // configMap: the update shows, and the watcher saw `..data` replaced.
    ensure!(run(&w, &watcher, "cat /config/key")? == "v1");
    config.update(&[("key", "v2")])?;
    let took = wait_until(
        "the configMap update showing in the guest",
        VISIBLE_WITHIN,
        || run(&w, &watcher, "cat /config/key").is_ok_and(|v| v == "v2"),
    )?;
    eprintln!("the configMap update showed after {took:?}");
    wait_until(
        "the inotify watcher seeing ..data replaced",
        VISIBLE_WITHIN,
        || run(&w, &watcher, "cat /tmp/events").is_ok_and(|e| e.contains("moved_to\t..data")),
    )
    .with_context(|| {
        let seen = run(&w, &watcher, "ls -la /config; cat /tmp/events");
        format!("in the container: {seen:?}\n{}", volume_log(&w))
    })?;
    eprintln!("events: {}", run(&w, &watcher, "cat /tmp/events")?);
    // A copy in the guest, but nothing stale: the key reads the new value through it.
    ensure!(run(&w, &watcher, "cat /config/..data/key")? == "v2");

    // Propagation from the host: rslave sees a later mount, rprivate does not.
    for d in [&slave, &private] {
        host_mount("tmpfs", &d.join("later"), MsFlags::empty())?;
        std::fs::write(d.join("later/mark"), "mounted\n")?;
    }
    let took = wait_until(
        "a host mount under an rslave volume showing",
        VISIBLE_WITHIN,
        || run(&w, &watcher, "cat /slave/later/mark").is_ok_and(|v| v == "mounted"),
    )?;
    eprintln!("the host mount showed after {took:?}");
    let private_view = run(&w, &watcher, "ls -A /private/later")?;
    ensure!(
        private_view.is_empty(),
        "an rprivate volume shows a later host mount: {private_view:?}"
    );

    // rshared within the pod: one container's mount reaches the other's.
    run(
        &w,
        &watcher,
        "mount -t tmpfs tmpfs /shared/later && echo inner > /shared/later/f",
    )?;
    wait_until(
        "a container's mount under an rshared volume reaching its peer",
        VISIBLE_WITHIN,
        || run(&w, &peer, "cat /shared/later/f").is_ok_and(|v| v == "inner"),
    )?;

    stop_and_remove_pod(&w, &pod)?;
    for d in [&slave, &private] {
        nix::mount::umount(&d.join("later"))?;
    }
    nix::mount::umount(&base)?;
    w.finish()?;
    Ok(())
}

#[test]
fn volume_updates_on_containerd_1_6() -> Result<()> {
    updates(ContainerdFlavour::System)
}

#[test]
fn volume_updates_on_containerd_2() -> Result<()> {
    updates(ContainerdFlavour::V2)
}

#[test]
fn volume_updates_on_containerd_2_sandbox_api() -> Result<()> {
    updates(ContainerdFlavour::V2SandboxApi)
}
