//! Second processes (`ctr task exec`) and signals (`ctr task kill`) through husk.

mod common;

use anyhow::Result;
use husk_tests::Runtime;

#[test]
fn exec_runs_in_the_same_container() -> Result<()> {
    common::run(
        "exec",
        Runtime::Husk,
        common::exec_runs_in_the_same_container,
    )
}

#[test]
fn kill_sigterm_stops_the_task() -> Result<()> {
    common::run(
        "kill-term",
        Runtime::Husk,
        common::kill_sigterm_stops_the_task,
    )
}

#[test]
fn kill_sigkill_stops_the_task() -> Result<()> {
    common::run(
        "kill-kill",
        Runtime::Husk,
        common::kill_sigkill_stops_the_task,
    )
}

#[test]
fn pause_freezes_and_resume_thaws() -> Result<()> {
    common::run(
        "pause",
        Runtime::Husk,
        common::task_control::pause_freezes_and_resume_thaws,
    )
}

#[test]
fn oom_kill_is_published_while_the_task_runs() -> Result<()> {
    common::run(
        "oom",
        Runtime::Husk,
        common::oom::oom_kill_is_published_while_the_task_runs,
    )
}
