//! Scenarios shared by the husk tests (`ctr_*.rs`) and the harness self-tests under runc
//! (`harness_runc.rs`): the same checks must pass with runc, which proves the checks
//! themselves before husk can run them.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod attach;
pub mod image_config;
pub mod oom;
pub mod task_control;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use husk_tests::containerd::major_version;
use husk_tests::kernel_release::release_of_bzimage;
use husk_tests::{Artifacts, ContainerdFlavour, Runtime, TEST_NAMESPACE, TestBed};
use sha2::{Digest, Sha256};

/// Size of the stdout stream test.
pub const STDOUT_BYTES: usize = 20_000_000;
/// Size of the stdin stream test.
pub const STDIN_BYTES: usize = 4_000_000;

/// Starts a test bed on the system containerd, runs `scenario`, then requires a clean
/// leak check.
pub fn run(
    name: &str,
    runtime: Runtime,
    scenario: impl FnOnce(&TestBed) -> Result<()>,
) -> Result<()> {
    run_on(name, runtime, ContainerdFlavour::System, scenario)
}

/// [`run`] on the given containerd. For containerd 2.x it first proves, through the
/// daemon's socket, that the daemon answering is 2.x.
pub fn run_on(
    name: &str,
    runtime: Runtime,
    flavour: ContainerdFlavour,
    scenario: impl FnOnce(&TestBed) -> Result<()>,
) -> Result<()> {
    let bed = TestBed::builder(name, runtime)
        .containerd(flavour)
        .start()
        .context("setting up the test bed")?;
    if flavour == ContainerdFlavour::V2 {
        let server = bed
            .ctr()
            .server_version()?
            .context("`ctr version` shows no server version")?;
        ensure!(
            major_version(&server).is_some_and(|m| m >= 2),
            "asked for containerd 2.x, but the daemon reports {server}"
        );
        eprintln!("containerd server version {server}");
    }
    scenario(&bed)?;
    bed.finish().context("leak check")?;
    Ok(())
}

/// `uname -r` in a husk container prints the guest kernel of the artifacts, not the
/// host's (the container really runs in a VM).
pub fn uname_r_is_the_guest_kernel(bed: &TestBed) -> Result<()> {
    let artifacts = Artifacts::from_env()?;
    let guest = release_of_bzimage(&artifacts.kernel())?;
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the host kernel release")?;
    let host = host.trim();
    ensure!(
        guest != host,
        "guest kernel {guest} equals the host's: the test would prove nothing"
    );
    let id = bed.id("uname");
    let out = bed.run(&id, &[], &["uname", "-r"]).output()?;
    ensure!(
        out.code() == 0,
        "uname -r exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    let got = out.stdout_text();
    let got = got.trim();
    ensure!(
        got != host,
        "the container reports the host kernel {host}: it did not run in a VM"
    );
    ensure!(got.starts_with("6.1."), "unexpected guest release {got:?}");
    ensure!(
        got == guest,
        "container runs kernel {got:?}, the artifacts have {guest:?}"
    );
    Ok(())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift64), so failures are reproducible.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sh -c 'exit 7'` makes ctr exit 7.
pub fn exit_code_propagates(bed: &TestBed) -> Result<()> {
    let id = bed.id("exit");
    let out = bed.run(&id, &[], &["sh", "-c", "exit 7"]).output()?;
    ensure!(
        out.code() == 7,
        "expected exit 7, got {}: {}",
        out.code(),
        out.stderr_text()
    );
    let id = bed.id("true");
    let out = bed.run(&id, &[], &["true"]).output()?;
    ensure!(
        out.code() == 0,
        "`true` exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    Ok(())
}

/// `ctr oci spec` with the image's rootfs, for `ctr run --config`. Its cgroup is the
/// container's own, as `ctr run` would give it: the default (`/<namespace>`) is one cgroup
/// that every such container of every test would share, and runc then fails to set up the
/// device rules of one while another has a child cgroup below it.
pub fn base_spec(bed: &TestBed, id: &str) -> Result<serde_json::Value> {
    let spec_text = bed.ctr().checked(["oci", "spec"])?.stdout_text();
    let mut spec: serde_json::Value =
        serde_json::from_str(&spec_text).context("parsing `ctr oci spec`")?;
    spec["root"] = serde_json::json!({ "path": bed.image_rootfs(), "readonly": true });
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{TEST_NAMESPACE}/{id}"));
    Ok(spec)
}

/// The OCI process spec is honoured: user and group, environment, working directory; the
/// container sees its own pid namespace, hostname, /proc, /sys, /dev and cgroup.
pub fn process_spec_is_honoured(bed: &TestBed) -> Result<()> {
    let id = bed.id("spec");
    let script = "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) foo=$FOO cwd=$(pwd); \
                  echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); \
                  test -e /proc/self/status && test -d /sys/kernel && test -c /dev/null && echo mounts-ok; \
                  echo cgroup=$(cat /proc/self/cgroup)";
    // ctr 1.6 has no --user: a hand-written spec carries the process settings.
    let mut spec = base_spec(bed, &id)?;
    spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    spec["process"]["user"] =
        serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [1002]});
    spec["process"]["env"] = serde_json::json!(["PATH=/bin:/sbin:/usr/bin", "FOO=bar baz"]);
    spec["process"]["cwd"] = serde_json::json!("/etc");
    let path = bed.dir().join("process-spec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    let out = bed
        .ctr()
        .cmd(["run", "--rm", "--runtime", bed.runtime_type(), "--config"])
        .arg(&path)
        .arg(&id)
        .output()?;
    ensure!(
        out.code() == 0,
        "container exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    let text = out.stdout_text();
    ensure!(
        text.contains("uid=1000 gid=1001 groups=1001 1002 foo=bar baz cwd=/etc"),
        "user, groups, env or cwd not applied: {text:?}"
    );
    ensure!(
        text.contains("pid1=sh -c "),
        "the container's own process is not PID 1 of its namespace: {text:?}"
    );
    ensure!(
        text.contains("mounts-ok"),
        "/proc, /sys or /dev missing: {text:?}"
    );
    // husk's guest runs cgroup v2 with each container in /husk/<id>; the host's runc puts
    // it at the spec's cgroupsPath (one line per controller on a cgroup v1 host).
    let cgroup = if bed.runtime_type() == husk_tests::HUSK_RUNTIME {
        format!("cgroup=0::/husk/{id}")
    } else {
        format!(":/{TEST_NAMESPACE}/{id}")
    };
    ensure!(
        text.contains(&cgroup),
        "container is not in its own cgroup ({cgroup}): {text:?}"
    );
    Ok(())
}

/// A process killed by SIGKILL reports 128 + 9, both for an exec'd process that kills
/// itself and for the container's init killed from outside.
///
/// (`sh -c 'kill -9 $$'` as the init cannot test this: Linux ignores signals a pid
/// namespace's init sends itself, so that shell just exits 0 — under runc and husk alike.)
pub fn sigkill_exit_is_137(bed: &TestBed) -> Result<()> {
    let id = bed.id("kill9");
    let run = start_ready(bed, &id, &["sh", "-c", "echo ready; exec sleep 1000"])?;
    let out = bed.ctr().run([
        "task",
        "exec",
        "--exec-id",
        "k9",
        &id,
        "sh",
        "-c",
        "kill -9 $$",
    ])?;
    ensure!(
        out.code() == 137,
        "exec killed by SIGKILL: expected 137, got {}: {}",
        out.code(),
        out.stderr_text()
    );
    bed.ctr().checked(["task", "kill", "-s", "SIGKILL", &id])?;
    let out = run.wait()?;
    ensure!(
        out.code() == 137,
        "init killed by SIGKILL: expected 137, got {}: {}",
        out.code(),
        out.stderr_text()
    );
    Ok(())
}

/// 20 MB of random data on stdout arrive complete; stderr carries only the container's
/// own checksum of what it sent, so the streams are complete and not mixed.
pub fn stdout_and_stderr_are_complete_and_separate(bed: &TestBed) -> Result<()> {
    let id = bed.id("streams");
    let script = format!(
        "head -c {STDOUT_BYTES} /dev/urandom > /tmp/data && cat /tmp/data && \
         sha256sum /tmp/data >&2 && echo stderr-done >&2"
    );
    let out = bed.run(&id, &[], &["sh", "-c", &script]).output()?;
    ensure!(
        out.code() == 0,
        "container exited {}: {}",
        out.code(),
        tail(&out.stderr)
    );
    ensure!(
        out.stdout.len() == STDOUT_BYTES,
        "stdout has {} bytes, expected {STDOUT_BYTES}; stderr: {}",
        out.stdout.len(),
        tail(&out.stderr)
    );
    let expected_stderr = format!("{}  /tmp/data\nstderr-done\n", sha256_hex(&out.stdout));
    ensure!(
        out.stderr_text() == expected_stderr,
        "stderr {:?} does not match the checksum of the received stdout ({expected_stderr:?})",
        out.stderr_text()
    );
    Ok(())
}

/// A few bytes of stdin that end before the task even starts: ctr then never sends
/// CloseIO, so the container's stdin must end when ctr closes its end of the fifo.
/// (containerd 1.6's runc shim hangs here; there is no runc twin of this test.)
pub fn short_stdin_ends_the_input(bed: &TestBed) -> Result<()> {
    let id = bed.id("shortin");
    let out = bed
        .run(&id, &[], &["cat"])
        .stdin_bytes(b"abc".to_vec())
        .timeout(Duration::from_secs(60))
        .output()?;
    ensure!(
        out.code() == 0 && out.stdout == b"abc",
        "cat with 3 bytes of stdin: exit {}, stdout {:?}, stderr {}",
        out.code(),
        out.stdout_text(),
        out.stderr_text()
    );
    Ok(())
}

/// `ctr run` passes its stdin through and closes the container's stdin at EOF. (ctr
/// 1.6 has no `-i`: a non-detached `ctr run` always attaches stdin.)
pub fn stdin_is_passed_through(bed: &TestBed) -> Result<()> {
    let id = bed.id("stdin");
    let data = pseudo_random(STDIN_BYTES, 0x5eed_1234_abcd_0001);
    let out = bed
        .run(
            &id,
            &[],
            &["sh", "-c", "tee /tmp/in && sha256sum /tmp/in >&2"],
        )
        .stdin_bytes(data.clone())
        .output()?;
    ensure!(
        out.code() == 0,
        "container exited {}: {}",
        out.code(),
        tail(&out.stderr)
    );
    ensure!(
        out.stdout.len() == data.len() && out.stdout == data,
        "echoed stdin differs: got {} bytes (sha256 {}), sent {} (sha256 {})",
        out.stdout.len(),
        sha256_hex(&out.stdout),
        data.len(),
        sha256_hex(&data)
    );
    let expected = format!("{}  /tmp/in\n", sha256_hex(&data));
    ensure!(
        out.stderr_text() == expected,
        "container saw different stdin: {:?}, expected {expected:?}",
        out.stderr_text()
    );
    Ok(())
}

/// `ctr run -t` gives the container a terminal.
pub fn tty_is_a_terminal(bed: &TestBed) -> Result<()> {
    let id = bed.id("tty");
    let out = bed
        .run(
            &id,
            &["-t"],
            &[
                "sh",
                "-c",
                "tty; test -t 0 && test -t 1 && echo stdin-stdout-are-ttys",
            ],
        )
        .output_in_pty()?;
    let text = out.stdout_text();
    ensure!(out.code() == 0, "container exited {}: {text}", out.code());
    ensure!(
        text.contains("/dev/pts/0"),
        "`tty` did not print /dev/pts/0: {text:?}"
    );
    ensure!(
        text.contains("stdin-stdout-are-ttys"),
        "stdin/stdout are not terminals: {text:?}"
    );
    Ok(())
}

/// Starts `args` in the background with `ctr run --rm` and waits until it printed
/// `ready` (so signal handlers are installed) — returns the running ctr.
pub fn start_ready(bed: &TestBed, id: &str, args: &[&str]) -> Result<husk_tests::cmd::Running> {
    let mut run = bed.run(id, &[], args).spawn()?;
    if !run.wait_for_stdout(b"ready", Duration::from_secs(100)) {
        let out = run.wait()?;
        bail!(
            "container {id} never printed `ready` (ctr: {}): {}",
            out.status,
            out.stderr_text()
        );
    }
    bed.ctr()
        .wait_task_status(id, "RUNNING", Duration::from_secs(10))
        .context("task status after `ready`")?;
    Ok(run)
}

/// `ctr task exec` runs a second process in the same container: it sees the first
/// one's files and pid namespace, and its exit code comes back.
pub fn exec_runs_in_the_same_container(bed: &TestBed) -> Result<()> {
    let id = bed.id("exec");
    let run = start_ready(
        bed,
        &id,
        &[
            "sh",
            "-c",
            "echo from-init > /tmp/marker && echo ready && exec sleep 1000",
        ],
    )?;
    let out = bed.ctr().run([
        "task",
        "exec",
        "--exec-id",
        "x1",
        &id,
        "sh",
        "-c",
        "cat /tmp/marker && tr '\\0' ' ' < /proc/1/cmdline && echo",
    ])?;
    ensure!(
        out.code() == 0,
        "exec failed ({}): {}",
        out.code(),
        out.stderr_text()
    );
    let text = out.stdout_text();
    ensure!(
        text.contains("from-init"),
        "exec does not see the init's files: {text:?}"
    );
    ensure!(
        text.contains("sleep 1000"),
        "exec is not in the init's pid namespace: {text:?}"
    );

    let out = bed
        .ctr()
        .run(["task", "exec", "--exec-id", "x2", &id, "sh", "-c", "exit 3"])?;
    ensure!(
        out.code() == 3,
        "exec exit code: expected 3, got {}: {}",
        out.code(),
        out.stderr_text()
    );

    bed.ctr().checked(["task", "kill", "-s", "SIGKILL", &id])?;
    let out = run.wait()?;
    ensure!(
        out.code() == 137,
        "after SIGKILL ctr run exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    Ok(())
}

/// `ctr task kill` (SIGTERM by default) stops a running `sleep` whose init handles it.
pub fn kill_sigterm_stops_the_task(bed: &TestBed) -> Result<()> {
    let id = bed.id("term");
    let run = start_ready(
        bed,
        &id,
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; sleep 1000 & echo ready; wait",
        ],
    )?;
    let start = Instant::now();
    bed.ctr().checked(["task", "kill", &id])?;
    let out = run.wait()?;
    ensure!(
        out.code() == 143,
        "after SIGTERM ctr run exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    ensure!(
        start.elapsed() < Duration::from_secs(30),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    Ok(())
}

/// `ctr task kill -s SIGKILL` stops a running `sleep` (PID 1, no handlers).
pub fn kill_sigkill_stops_the_task(bed: &TestBed) -> Result<()> {
    let id = bed.id("kill");
    let run = start_ready(bed, &id, &["sh", "-c", "echo ready; exec sleep 1000"])?;
    let start = Instant::now();
    bed.ctr().checked(["task", "kill", "-s", "SIGKILL", &id])?;
    let out = run.wait()?;
    ensure!(
        out.code() == 137,
        "after SIGKILL ctr run exited {}: {}",
        out.code(),
        out.stderr_text()
    );
    ensure!(
        start.elapsed() < Duration::from_secs(30),
        "SIGKILL took {:?}",
        start.elapsed()
    );
    Ok(())
}

/// An OCI spec with a relative `process.cwd` ("MUST be an absolute path") is refused
/// within a bound, with an error naming `cwd`, and nothing is left behind.
pub fn invalid_spec_is_rejected(bed: &TestBed, within: Duration) -> Result<()> {
    let id = bed.id("badspec");
    let mut spec = base_spec(bed, &id)?;
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["cwd"] = serde_json::json!("relative/dir");
    let path = bed.dir().join("bad-spec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;

    let out = bed
        .ctr()
        .cmd(["run", "--rm", "--runtime", bed.runtime_type(), "--config"])
        .arg(&path)
        .arg(&id)
        .output()?;
    ensure!(
        out.code() != 0,
        "a spec with a relative cwd was accepted: {}",
        out.stdout_text()
    );
    ensure!(
        out.elapsed < within,
        "rejecting took {:?} (bound {within:?})",
        out.elapsed
    );
    let err = out.stderr_text();
    ensure!(
        err.to_lowercase().contains("cwd"),
        "the error does not name the problem (cwd): {err}"
    );
    nothing_left(bed, &id)
}

/// `ctr run` of `true` fails after at least `not_before` and within `within`, and
/// stderr contains every `needles` (case-insensitive); nothing is left behind.
pub fn run_fails_naming(
    bed: &TestBed,
    short: &str,
    not_before: Duration,
    within: Duration,
    needles: &[&str],
) -> Result<()> {
    let id = bed.id(short);
    let out = bed.run(&id, &[], &["true"]).output()?;
    ensure!(
        out.code() != 0,
        "the container ran although it should not have: {}",
        out.stderr_text()
    );
    ensure!(
        out.elapsed < within,
        "failing took {:?} (bound {within:?})",
        out.elapsed
    );
    ensure!(
        out.elapsed >= not_before,
        "failed after only {:?}, before {not_before:?} could pass — for another reason than \
         the one under test? {}",
        out.elapsed,
        out.stderr_text()
    );
    let err = out.stderr_text();
    for needle in needles {
        ensure!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "the error does not mention {needle:?}: {err}"
        );
    }
    nothing_left(bed, &id)
}

/// No container or task `id` remains in containerd.
pub fn nothing_left(bed: &TestBed, id: &str) -> Result<()> {
    let containers = bed.ctr().containers()?;
    ensure!(
        !containers.iter().any(|c| c == id),
        "container {id} was left behind"
    );
    let tasks = bed.ctr().tasks()?;
    ensure!(!tasks.iter().any(|t| t == id), "task {id} was left behind");
    Ok(())
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let skip = text.chars().count().saturating_sub(2000);
    text.chars().skip(skip).collect()
}
