//! Second processes (`ctr task exec`) and signals (`ctr task kill`) through husk under
//! containerd 2.x. Same scenarios as `ctr_exec_kill.rs`.

mod common;

use anyhow::Result;
use husk_tests::{ContainerdFlavour, Runtime};

const CONTAINERD: ContainerdFlavour = ContainerdFlavour::V2;

#[test]
fn exec_runs_in_the_same_container() -> Result<()> {
    common::run_on(
        "ctr2-exec",
        Runtime::Husk,
        CONTAINERD,
        common::exec_runs_in_the_same_container,
    )
}

#[test]
fn kill_sigterm_stops_the_task() -> Result<()> {
    common::run_on(
        "ctr2-kill-term",
        Runtime::Husk,
        CONTAINERD,
        common::kill_sigterm_stops_the_task,
    )
}

#[test]
fn kill_sigkill_stops_the_task() -> Result<()> {
    common::run_on(
        "ctr2-kill-kill",
        Runtime::Husk,
        CONTAINERD,
        common::kill_sigkill_stops_the_task,
    )
}

#[test]
fn pause_freezes_and_resume_thaws() -> Result<()> {
    common::run_on(
        "ctr2-pause",
        Runtime::Husk,
        CONTAINERD,
        common::task_control::pause_freezes_and_resume_thaws,
    )
}

#[test]
fn oom_kill_is_published_while_the_task_runs() -> Result<()> {
    common::run_on(
        "ctr2-oom",
        Runtime::Husk,
        CONTAINERD,
        common::oom::oom_kill_is_published_while_the_task_runs,
    )
}
