//! Self-tests of the harness under runc (which works on these machines): the private
//! containerd, the offline image import, ctr with deadlines, the leak checker — and the
//! very scenarios the husk tests run, so a husk failure is husk's, not the test's.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use husk_tests::leaks::shim_socket_path;
use husk_tests::{Runtime, TEST_NAMESPACE, TestBed};

const RT: Runtime = Runtime::Runc;

#[test]
fn busybox_runs_under_runc_and_nothing_leaks() -> Result<()> {
    common::run("harness-runc", RT, |bed| {
        let id = bed.id("uname");
        let out = bed.run(&id, &[], &["uname", "-a"]).checked()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        // runc shares the host kernel: the same release shows up.
        ensure!(
            out.stdout_text().contains(host.trim()),
            "{}",
            out.stdout_text()
        );
        common::nothing_left(bed, &id)
    })
}

#[test]
fn leak_checker_sees_a_running_container() -> Result<()> {
    let bed = TestBed::start("harness-leak", RT)?;
    let id = bed.id("leak");
    bed.run_detached(&id, &["sleep", "1000"])?;
    let report = bed.check_leaks_now()?;
    let names: Vec<String> = report.processes.iter().map(|p| p.name()).collect();
    ensure!(
        names.iter().any(|n| n == "containerd-shim-runc-v2"),
        "shim not attributed: {report}"
    );
    ensure!(
        names.iter().any(|n| n == "sleep"),
        "container process not attributed: {report}"
    );
    let socket = shim_socket_path(bed.containerd().address(), TEST_NAMESPACE, &id);
    ensure!(
        report.paths.contains(&socket),
        "shim socket {} not found: {report}",
        socket.display()
    );
    ensure!(
        report.mounts.iter().any(|m| m.ends_with("rootfs")),
        "rootfs mount not attributed: {report}"
    );
    ensure!(!report.is_clean());

    // Clean up properly; then the bed must be clean.
    bed.stop_detached(&id)?;
    bed.finish()?;
    Ok(())
}

#[test]
fn runc_exit_code_propagates() -> Result<()> {
    common::run("runc-exit", RT, common::exit_code_propagates)
}

#[test]
fn runc_process_spec_is_honoured() -> Result<()> {
    common::run(
        "runc-proc-spec",
        Runtime::Runc,
        common::process_spec_is_honoured,
    )
}

#[test]
fn runc_pathless_process_runs() -> Result<()> {
    common::run(
        "runc-nopath",
        RT,
        common::image_config::pathless_process_runs,
    )
}

#[test]
fn runc_pause_freezes_and_resume_thaws() -> Result<()> {
    common::run(
        "runc-pause",
        RT,
        common::task_control::pause_freezes_and_resume_thaws,
    )
}

#[test]
fn runc_sigkill_exit_is_137() -> Result<()> {
    common::run("runc-kill9", RT, common::sigkill_exit_is_137)
}

#[test]
fn runc_stdout_and_stderr() -> Result<()> {
    common::run(
        "runc-streams",
        RT,
        common::stdout_and_stderr_are_complete_and_separate,
    )
}

#[test]
fn runc_stdin() -> Result<()> {
    common::run("runc-stdin", RT, common::stdin_is_passed_through)
}

#[test]
fn runc_tty() -> Result<()> {
    common::run("runc-tty", RT, common::tty_is_a_terminal)
}

#[test]
fn runc_exec() -> Result<()> {
    common::run("runc-exec", RT, common::exec_runs_in_the_same_container)
}

#[test]
fn runc_kill_sigterm() -> Result<()> {
    common::run("runc-term", RT, common::kill_sigterm_stops_the_task)
}

#[test]
fn runc_kill_sigkill() -> Result<()> {
    common::run("runc-sigkill", RT, common::kill_sigkill_stops_the_task)
}

#[test]
fn runc_invalid_spec() -> Result<()> {
    common::run("runc-badspec", RT, |bed| {
        common::invalid_spec_is_rejected(bed, Duration::from_secs(20))
    })
}
