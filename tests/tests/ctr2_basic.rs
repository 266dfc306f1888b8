//! The basics through containerd 2.x's `ctr` with `--runtime io.containerd.husk.v2`: the
//! container runs in a VM with husk's guest kernel, and exit codes come back. Same
//! scenarios as `ctr_basic.rs`, on the containerd 2.x that `cargo xtask deps` fetches.

mod common;

use anyhow::Result;
use husk_tests::{ContainerdFlavour, Runtime};

const CONTAINERD: ContainerdFlavour = ContainerdFlavour::V2;

#[test]
fn uname_r_is_the_guest_kernel() -> Result<()> {
    common::run_on(
        "ctr2-uname-r",
        Runtime::Husk,
        CONTAINERD,
        common::uname_r_is_the_guest_kernel,
    )
}

#[test]
fn exit_code_propagates() -> Result<()> {
    common::run_on(
        "ctr2-exit-code",
        Runtime::Husk,
        CONTAINERD,
        common::exit_code_propagates,
    )
}

#[test]
fn sigkill_exit_is_137() -> Result<()> {
    common::run_on(
        "ctr2-sigkill-137",
        Runtime::Husk,
        CONTAINERD,
        common::sigkill_exit_is_137,
    )
}

#[test]
fn process_spec_is_honoured() -> Result<()> {
    common::run_on(
        "ctr2-proc-spec",
        Runtime::Husk,
        CONTAINERD,
        common::process_spec_is_honoured,
    )
}

#[test]
fn pathless_process_runs() -> Result<()> {
    common::run_on(
        "ctr2-nopath",
        Runtime::Husk,
        CONTAINERD,
        common::image_config::pathless_process_runs,
    )
}
