//! Process IO through husk under containerd 2.x: large stdout, separate stderr, stdin, and
//! terminals. Same scenarios as `ctr_stdio.rs`.

mod common;

use anyhow::Result;
use husk_tests::{ContainerdFlavour, Runtime};

const CONTAINERD: ContainerdFlavour = ContainerdFlavour::V2;

#[test]
fn stdout_and_stderr_are_complete_and_separate() -> Result<()> {
    common::run_on(
        "ctr2-streams",
        Runtime::Husk,
        CONTAINERD,
        common::stdout_and_stderr_are_complete_and_separate,
    )
}

#[test]
fn stdin_is_passed_through() -> Result<()> {
    common::run_on(
        "ctr2-stdin",
        Runtime::Husk,
        CONTAINERD,
        common::stdin_is_passed_through,
    )
}

#[test]
fn tty_is_a_terminal() -> Result<()> {
    common::run_on(
        "ctr2-tty",
        Runtime::Husk,
        CONTAINERD,
        common::tty_is_a_terminal,
    )
}

#[test]
fn attach_streams_a_detached_task() -> Result<()> {
    common::run_on(
        "ctr2-attach",
        Runtime::Husk,
        CONTAINERD,
        common::attach::attach_streams_a_detached_task,
    )
}
