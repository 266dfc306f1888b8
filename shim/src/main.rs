//! `containerd-shim-husk-v2`: parses containerd's shim command line and runs the action it
//! names (`start`, `delete`, serve, `check`); the work is in the `husk_shim` library.

use std::process::ExitCode;

use husk_shim::args::{Action, Args};

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.action {
        Action::Version => {
            println!("containerd-shim-husk-v2 {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        Action::Start => husk_shim::start::run(&args).map(|()| true),
        Action::Delete => husk_shim::cleanup::run(&args).map(|()| true),
        Action::Check => husk_shim::check::run(),
        Action::Serve => husk_shim::serve::run(&args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}
