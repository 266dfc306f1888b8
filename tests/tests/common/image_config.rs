//! Scenarios about what images built FROM scratch leave out: no `PATH`, an arbitrary uid.

use anyhow::{Result, ensure};
use husk_tests::TestBed;

use super::{base_spec, nothing_left};

/// A process without `PATH` in its environment and running as 65535:65535 runs when
/// `args[0]` is a path, as runc runs it; a bare name without `PATH` fails at create,
/// naming the program and the cause, and leaves nothing behind.
pub fn pathless_process_runs(bed: &TestBed) -> Result<()> {
    let run = |id: &str, args: serde_json::Value| -> Result<husk_tests::Output> {
        let mut spec = base_spec(bed, id)?;
        spec["process"]["args"] = args;
        spec["process"]["env"] = serde_json::json!(["HOME=/"]);
        spec["process"]["user"] = serde_json::json!({"uid": 65535, "gid": 65535});
        let path = bed.dir().join(format!("{id}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(bed
            .ctr()
            .cmd(["run", "--rm", "--runtime", bed.runtime_type(), "--config"])
            .arg(&path)
            .arg(id)
            .output()?)
    };

    let id = bed.id("nopath");
    let out = run(
        &id,
        serde_json::json!(["/bin/sh", "-c", "echo uid=$(/bin/id -u) gid=$(/bin/id -g)"]),
    )?;
    ensure!(
        out.code() == 0,
        "an absolute program without PATH did not run (exit {}): {}",
        out.code(),
        out.stderr_text()
    );
    let text = out.stdout_text();
    ensure!(
        text.contains("uid=65535 gid=65535"),
        "the process does not run as 65535:65535: {text:?}"
    );
    nothing_left(bed, &id)?;

    let id = bed.id("nopath-bare");
    let out = run(&id, serde_json::json!(["sh", "-c", "true"]))?;
    ensure!(
        out.code() != 0,
        "a bare program name ran without PATH: {}",
        out.stdout_text()
    );
    let err = out.stderr_text();
    // runc: `exec: "sh": executable file not found in $PATH`.
    for needle in ["sh", "not found", "PATH"] {
        ensure!(
            err.contains(needle),
            "the error does not name the problem ({needle}): {err}"
        );
    }
    nothing_left(bed, &id)
}
