//! One module per `cargo xtask` subcommand.

pub mod bench;
pub mod build;
pub mod demo;
pub mod deps;
pub mod fuzz;
pub mod initramfs;
pub mod install;
pub mod kernel;
pub mod test;

/// Whether we run as root (installing packages and files needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a private containerd in `scope` that runs husk from `artifacts`.
pub fn husk_containerd(
    scope: &husk_tests::TestScope,
    artifacts: &husk_tests::Artifacts,
) -> anyhow::Result<husk_tests::Containerd> {
    crate::ui::step(format!(
        "starting a private containerd in {}",
        scope.dir().display()
    ));
    Ok(husk_tests::Containerd::start(
        scope,
        &husk_tests::ContainerdOptions {
            shim_dir: Some(artifacts.dir().to_owned()),
            husk_config: Some(artifacts.config()),
            ..husk_tests::ContainerdOptions::default()
        },
    )?)
}
