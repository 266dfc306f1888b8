//! The basics through `ctr` with `--runtime io.containerd.husk.v2`: the container runs
//! in a VM with husk's guest kernel, and exit codes come back.

mod common;

use anyhow::Result;
use husk_tests::Runtime;

#[test]
fn uname_r_is_the_guest_kernel() -> Result<()> {
    common::run(
        "uname-r",
        Runtime::Husk,
        common::uname_r_is_the_guest_kernel,
    )
}

#[test]
fn exit_code_propagates() -> Result<()> {
    common::run("exit-code", Runtime::Husk, common::exit_code_propagates)
}

#[test]
fn sigkill_exit_is_137() -> Result<()> {
    common::run("sigkill-137", Runtime::Husk, common::sigkill_exit_is_137)
}

#[test]
fn process_spec_is_honoured() -> Result<()> {
    common::run("proc-spec", Runtime::Husk, common::process_spec_is_honoured)
}

#[test]
fn pathless_process_runs() -> Result<()> {
    common::run(
        "nopath",
        Runtime::Husk,
        common::image_config::pathless_process_runs,
    )
}
