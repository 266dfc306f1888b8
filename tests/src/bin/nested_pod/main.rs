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
//!            --state-dir <dir> [--vmm <husk-vmm>] [--id <pod id>] [--net none|http|bench]
//!            [--io]
//! ```
//!
//! `--io` adds the pod's IO figures to the result ([`io`]): agent RPC round trip, stdout
//! and virtio-fs throughput, the host's file throughput beside them.
//!
//! The containers' rootfs holds the machine's static `/bin/busybox`.
//!
//! `--net http` gives the pod a network as CNI would (a namespace with a veth on a bridge,
//! [`net`]): the VM takes it over, busybox `httpd` in a second container must answer at
//! the pod's address from the host, and nothing of husk's may remain in the namespace
//! afterwards. `--net bench` measures TCP throughput and ping round-trip time host → pod
//! and pod → pod, next to a plain namespace on the same bridge (`NETPATH` lines).
//!
//! Without `--vmm`, the built-in backend looks `husk-vmm` up the way the shim does (beside
//! the running executable, then on `PATH`).
//!
//! Output: progress on stderr; on success one line on stdout,
//! `RESULT backend=<vmm name> boot_to_agent_ms=… …` (see [`report::Report`]).

mod io;
mod net;
mod pod;
mod report;
mod single;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use husk_tests::nested::compare::DRIVER_ERROR_PREFIX;

/// Parsed command line.
struct Args {
    config: PathBuf,
    backend: String,
    state_dir: PathBuf,
    vmm: Option<String>,
    id: String,
    net: NetMode,
    /// Measure IO too ([`io`]).
    io: bool,
}

/// What the pod's network is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NetMode {
    /// No network device.
    None,
    /// HTTP to the pod's address.
    Http,
    /// Throughput and round-trip time.
    Bench,
}

fn parse_args() -> Result<Args> {
    let mut config = None;
    let mut backend = None;
    let mut state_dir = None;
    let mut net = NetMode::None;
    let mut vmm = None;
    let mut id = String::from("nested-pod");
    let mut io = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--backend" => backend = Some(value()?),
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--net" => {
                net = match value()?.as_str() {
                    "none" => NetMode::None,
                    "http" => NetMode::Http,
                    "bench" => NetMode::Bench,
                    other => bail!("--net {other:?}: expected none, http or bench"),
                }
            }
            "--vmm" => vmm = Some(value()?),
            "--id" => id = value()?,
            "--io" => io = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        config: config.context("--config is required")?,
        backend: backend.context("--backend is required")?,
        state_dir: state_dir.context("--state-dir is required")?,
        vmm,
        id,
        net,
        io,
    })
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(async {
                if args.net == NetMode::Bench {
                    net::bench(&args).await
                } else {
                    single::run(&args).await.map(|r| r.to_string())
                }
            })
    });
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{DRIVER_ERROR_PREFIX}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
