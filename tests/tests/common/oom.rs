//! Live OOM events: a process OOM-killed in a running container is published as
//! `/tasks/oom` at once, while the container's init lives on (as the runc shim does).

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use husk_tests::TestBed;

/// The container's memory limit (`ctr run --memory-limit`).
const LIMIT: &str = "33554432";

pub fn oom_kill_is_published_while_the_task_runs(bed: &TestBed) -> Result<()> {
    let id = bed.id("oom");
    let events = bed.ctr().cmd(["events"]).spawn()?;
    // busybox `tail` keeps a line without end in memory: it grows past the limit and is
    // OOM-killed; the shell that started it goes on.
    bed.ctr()
        .cmd([
            "run",
            "-d",
            "--runtime",
            bed.runtime_type(),
            "--memory-limit",
            LIMIT,
        ])
        .arg(bed.image())
        .arg(&id)
        .args([
            "sh",
            "-c",
            "head -c 200000000 /dev/zero | tail; echo survived; sleep 100000",
        ])
        .checked()?;
    let start = Instant::now();
    let published = loop {
        let text = String::from_utf8_lossy(&events.stdout_so_far()).into_owned();
        if text
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id))
        {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no /tasks/oom for {id} within 60 s; events: {text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("/tasks/oom published {published:?} after ctr run -d returned");
    ensure!(
        bed.ctr().task_status(&id)?.as_deref() == Some("RUNNING"),
        "the task is not running after the OOM kill of its child"
    );
    drop(events);
    bed.stop_detached(&id)?;
    Ok(())
}
