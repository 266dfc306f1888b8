//! `nested_pod`: one husk pod, start to finish, through the shim's own building blocks —
//! backend selection, VM launch, the agent client, a container whose output comes back —
//! printing how long each step took and how much memory the monitor uses.
//!
//! The nested-KVM tests (`tests/tests/nested_husk_vmm.rs`) run it *inside* the nested test
//! host (`husk_tests::nested`), where `/dev/kvm` works, once with QEMU/KVM and once with
//! the built-in monitor, so the two are measured side by side. It needs root (the pod
//! directory is a tmpfs mount) and a writable `--state-dir`.
//!
//! ```text
//! nested_pod --config <husk config.toml> --backend <auto|qemu|builtin|…> \
//!            --state-dir <dir> --busybox <static busybox> [--vmm <husk-vmm>] [--id <pod id>]
//! ```
//!
//! Without `--vmm`, the built-in backend looks `husk-vmm` up the way the shim does (beside
//! the running executable, then on `PATH`).
//!
//! Output: progress on stderr; on success one line on stdout,
//! `RESULT backend=<vmm name> boot_to_agent_ms=… …` (see [`report::Report`]).

mod pod;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

/// Parsed command line.
struct Args {
    config: PathBuf,
    backend: String,
    state_dir: PathBuf,
    busybox: PathBuf,
    vmm: Option<String>,
    id: String,
}

fn parse_args() -> Result<Args> {
    let mut config = None;
    let mut backend = None;
    let mut state_dir = None;
    let mut busybox = None;
    let mut vmm = None;
    let mut id = String::from("nested-pod");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--backend" => backend = Some(value()?),
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--busybox" => busybox = Some(PathBuf::from(value()?)),
            "--vmm" => vmm = Some(value()?),
            "--id" => id = value()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        config: config.context("--config is required")?,
        backend: backend.context("--backend is required")?,
        state_dir: state_dir.context("--state-dir is required")?,
        busybox: busybox.context("--busybox is required")?,
        vmm,
        id,
    })
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(pod::run(&args))
    });
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nested_pod: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
