//! Any image runc runs, husk runs: images built FROM scratch by tools other than docker
//! have no `PATH` in their config and often run as an arbitrary uid. Every CRI world's
//! pause image is such an image (no `PATH`, 65535:65535, like `registry.k8s.io/pause`);
//! here an application image of that kind runs beside it, through CRI on containerd 1.6
//! and 2.x.

mod cri_common;

use anyhow::{Result, ensure};
use cri_common::{exec_ok, running, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use husk_tests::image::{BusyboxImage, PAUSE_COMMAND, SCRATCH_COMMAND, SCRATCH_IMAGE_REF};
use k8s_cri::v1::ImageSpec;

fn scratch_images_run(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-images", flavour)?;
    let scratch = BusyboxImage::ensure_scratch(&husk_kernel_config::cache_root()?)?;
    w.import(&scratch)?;
    let c = w.client();

    // No command: the image's own (absolute) one runs, as the image's user.
    let mut pod_cfg = w.pod_config("scratch")?;
    let mut cfg = specs::container_config("app", &[]);
    cfg.image = Some(ImageSpec {
        image: SCRATCH_IMAGE_REF.into(),
        ..Default::default()
    });
    // Pod-wide PID namespace (shareProcessNamespace): the container sees the pause process.
    ensure!(
        specs::share_pod_pids(&mut pod_cfg, &mut cfg),
        "the configs have no namespace options"
    );
    let pod = w.run_pod_with(&pod_cfg)?;
    let app = w.create_container(&pod, &cfg, &pod_cfg)?;
    c.start_container(&app)?;
    running(c, &app)?;

    let ids = exec_ok(c, &app, &["/bin/sh", "-c", "/bin/id -u; /bin/id -g"])?;
    ensure!(
        ids.split_whitespace().eq(["65535", "65535"]),
        "the scratch container does not run as the image's 65535:65535: {ids:?}"
    );
    // The pause process, PID 1 of the shared namespace, runs as the pause image's user.
    let pause = exec_ok(
        c,
        &app,
        &[
            "/bin/sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; echo; grep -E '^(Uid|Gid):' /proc/1/status",
        ],
    )?;
    // containerd passes the image's (empty) environment on: the sandbox has no PATH, which
    // is what this test is about.
    let environ = exec_ok(
        c,
        &app,
        &["/bin/sh", "-c", "tr '\\0' ' ' < /proc/1/environ"],
    )?;
    ensure!(
        !environ.contains("PATH="),
        "containerd gave the sandbox a PATH ({environ:?}): the test no longer runs a \
         PATH-less sandbox"
    );
    let lines: Vec<&str> = pause.lines().collect();
    // With the Sandbox API there is no pause image: the shim runs the agent's binary as the
    // pause process, also without PATH and as 65535.
    let pause_command = if flavour == ContainerdFlavour::V2SandboxApi {
        "/pause --husk-pause".to_owned()
    } else {
        PAUSE_COMMAND.join(" ")
    };
    ensure!(
        lines.first().map(|l| l.trim()) == Some(pause_command.as_str()),
        "PID 1 of the pod is not the pause command {pause_command:?}: {pause:?}"
    );
    for line in &lines[1..] {
        ensure!(
            line.split_whitespace().skip(1).all(|id| id == "65535"),
            "the pause process does not run as 65535:65535: {pause:?}"
        );
    }
    let cmdline = exec_ok(
        c,
        &app,
        &[
            "/bin/sh",
            "-c",
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
        ],
    )?;
    ensure!(
        cmdline
            .lines()
            .any(|l| l.trim() == SCRATCH_COMMAND.join(" ")),
        "the image's command is not running: {cmdline:?}"
    );

    stop_and_remove_container(c, &app, 0)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn scratch_images_run_on_containerd_1_6() -> Result<()> {
    scratch_images_run(ContainerdFlavour::System)
}

#[test]
fn scratch_images_run_on_containerd_2() -> Result<()> {
    scratch_images_run(ContainerdFlavour::V2)
}

#[test]
fn scratch_images_run_on_containerd_2_sandbox_api() -> Result<()> {
    scratch_images_run(ContainerdFlavour::V2SandboxApi)
}
