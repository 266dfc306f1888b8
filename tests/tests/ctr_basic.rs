//! The basics through `ctr` with `--runtime io.containerd.husk.v2`: the container runs
//! in a VM with husk's guest kernel, and exit codes come back.

mod common;

use anyhow::{Context, Result, ensure};
use husk_tests::kernel_release::release_of_bzimage;
use husk_tests::{Artifacts, Runtime};

#[test]
fn uname_r_is_the_guest_kernel() -> Result<()> {
    let artifacts = Artifacts::from_env()?;
    let guest = release_of_bzimage(&artifacts.kernel())?;
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the host kernel release")?;
    let host = host.trim();
    ensure!(
        guest != host,
        "guest kernel {guest} equals the host's: the test would prove nothing"
    );
    common::run("uname-r", Runtime::Husk, |bed| {
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
    })
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
