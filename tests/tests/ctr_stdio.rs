//! Process IO through husk: large stdout, separate stderr, stdin, and terminals.

mod common;

use anyhow::Result;
use husk_tests::Runtime;

#[test]
fn stdout_and_stderr_are_complete_and_separate() -> Result<()> {
    common::run(
        "streams",
        Runtime::Husk,
        common::stdout_and_stderr_are_complete_and_separate,
    )
}

#[test]
fn stdin_is_passed_through() -> Result<()> {
    common::run("stdin", Runtime::Husk, common::stdin_is_passed_through)
}

#[test]
fn tty_is_a_terminal() -> Result<()> {
    common::run("tty", Runtime::Husk, common::tty_is_a_terminal)
}

#[test]
fn short_stdin_ends_the_input() -> Result<()> {
    common::run("shortin", Runtime::Husk, common::short_stdin_ends_the_input)
}

#[test]
fn attach_streams_a_detached_task() -> Result<()> {
    common::run(
        "attach",
        Runtime::Husk,
        common::attach::attach_streams_a_detached_task,
    )
}
