//! Pause and resume through `ctr task pause` / `resume`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use husk_tests::TestBed;
use husk_tests::cmd::Running;

use super::start_ready;

/// How many `tick` lines the container has printed so far.
fn ticks(run: &Running) -> usize {
    String::from_utf8_lossy(&run.stdout_so_far())
        .lines()
        .filter(|l| l.starts_with("tick"))
        .count()
}

/// A paused container stops running (its output stops), reports PAUSED, takes no exec, and
/// runs on from where it was after resume; a paused container can still be killed.
pub fn pause_freezes_and_resume_thaws(bed: &TestBed) -> Result<()> {
    let id = bed.id("pause");
    let mut run = start_ready(
        bed,
        &id,
        &[
            "sh",
            "-c",
            "echo ready; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done",
        ],
    )?;
    ensure!(
        run.wait_for_stdout(b"tick2\n", Duration::from_secs(30)),
        "the container does not tick: {:?}",
        String::from_utf8_lossy(&run.stdout_so_far())
    );

    bed.ctr().checked(["task", "pause", &id])?;
    bed.ctr()
        .wait_task_status(&id, "PAUSED", Duration::from_secs(10))
        .context("task status after pause")?;
    // What was written before the freeze may still be on its way.
    std::thread::sleep(Duration::from_secs(1));
    let frozen_at = ticks(&run);
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        ticks(&run) == frozen_at,
        "the paused container kept running: {frozen_at} ticks, then {}",
        ticks(&run)
    );
    let exec = bed
        .ctr()
        .cmd(["task", "exec", "--exec-id", "in-paused", &id, "true"])
        .timeout(Duration::from_secs(60))
        .output()?;
    ensure!(
        exec.code() != 0,
        "an exec ran in a paused container: {}",
        exec.stdout_text()
    );

    bed.ctr().checked(["task", "resume", &id])?;
    bed.ctr()
        .wait_task_status(&id, "RUNNING", Duration::from_secs(10))
        .context("task status after resume")?;
    let next = format!("tick{}\n", frozen_at + 1);
    ensure!(
        run.wait_for_stdout(next.as_bytes(), Duration::from_secs(30)),
        "the container did not run on after resume ({frozen_at} ticks)"
    );

    bed.ctr().checked(["task", "pause", &id])?;
    bed.ctr()
        .wait_task_status(&id, "PAUSED", Duration::from_secs(10))
        .context("task status after the second pause")?;
    bed.ctr().checked(["task", "kill", "-s", "SIGKILL", &id])?;
    let out = run.wait()?;
    ensure!(
        out.code() == 137,
        "killing the paused container: ctr run exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    Ok(())
}
