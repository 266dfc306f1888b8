//! One module per `cargo xtask` subcommand.

pub mod bench;
pub mod build;
pub mod demo;
pub mod deps;
pub mod initramfs;
pub mod install;
pub mod kernel;
pub mod test;

/// Whether we run as root (installing packages and files needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
