//! `cargo xtask` — husk's project tasks (see `cargo xtask --help`).
//!
//! Every task prints what it does; every external command has a deadline and fails with
//! an error naming the command. Artifacts go to `target/husk/`; downloads and the guest
//! kernel are cached in `$HUSK_CACHE_DIR` (default `~/.cache/husk`).

mod commands;
mod ui;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "husk build, install, demo and test tasks",
    after_help = "Caches: $HUSK_CACHE_DIR (default ~/.cache/husk). Artifacts: <target>/husk/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need on Debian 12 (apt packages, virtiofsd).
    Deps,
    /// Build the guest kernel, or reuse the cached one with the same recipe key.
    Kernel,
    /// Build the static husk-agent and the guest initramfs (target/husk/initrd.img).
    Initramfs {
        /// Use this prebuilt, statically linked agent instead of building husk-agent.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// deps + kernel + initramfs + shim + monitor; collect everything in target/husk/.
    Build,
    /// Build, then install the shim, guest kernel, initramfs, virtiofsd, config and
    /// containerd drop-in system-wide (needs root).
    Install,
    /// Build, start a private containerd and run `uname -a` in a husk VM.
    Demo,
    /// Build, then measure start-up time and pod memory; writes BENCHMARKS.md.
    Bench,
    /// Build, then run fmt, clippy and all unit and integration tests.
    Test {
        /// Extra arguments for `cargo nextest run` (e.g. a filter expression).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ws = Workspace::discover()?;
    match cli.command {
        Command::Deps => commands::deps::run(&ws),
        Command::Kernel => commands::kernel::run(&ws).map(|_| ()),
        Command::Initramfs { agent } => commands::initramfs::run(&ws, agent.as_deref()).map(|_| ()),
        Command::Build => commands::build::run(&ws).map(|_| ()),
        Command::Install => commands::install::run(&ws),
        Command::Demo => commands::demo::run(&ws),
        Command::Bench => commands::bench::run(&ws),
        Command::Test { nextest_args } => commands::test::run(&ws, &nextest_args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
