//! `ctr task attach` to a running task.

use std::time::Duration;

use anyhow::{Result, ensure};
use husk_tests::TestBed;

/// `ctr task attach` to a task started detached (`ctr run -d`): the attacher gets all of
/// its stdout and stderr, including what it wrote before anyone attached (the shim keeps
/// the fifos open), and its exit code; the attach then deletes the task.
pub fn attach_streams_a_detached_task(bed: &TestBed) -> Result<()> {
    let id = bed.id("attach");
    bed.run_detached(
        &id,
        &[
            "sh",
            "-c",
            "echo early; for i in 1 2 3; do sleep 0.5; echo tick-$i; echo err-$i >&2; done; exit 7",
        ],
    )?;
    let out = bed
        .ctr()
        .cmd(["task", "attach", id.as_str()])
        .timeout(Duration::from_secs(60))
        .output()?;
    ensure!(
        out.code() == 7,
        "attach returned {} (the task exits 7): {}",
        out.code(),
        out.stderr_text()
    );
    ensure!(
        out.stdout_text() == "early\ntick-1\ntick-2\ntick-3\n",
        "attached stdout {:?}",
        out.stdout_text()
    );
    ensure!(
        out.stderr_text().contains("err-1\nerr-2\nerr-3\n"),
        "attached stderr {:?}",
        out.stderr_text()
    );
    ensure!(
        bed.ctr().task_status(&id)?.is_none(),
        "the attach did not delete the task"
    );
    bed.ctr().checked(["container", "delete", id.as_str()])?;
    Ok(())
}
