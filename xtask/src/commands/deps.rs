//! `cargo xtask deps`: installs what building and testing husk need on Debian 12,
//! skipping what is already there — including containerd 2.x for the tests, unpacked into
//! the husk cache (see [`containerd2`]).

pub mod containerd2;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use husk_tests::Cmd;

use crate::ui::{note, step};
use crate::workspace::Workspace;

/// Debian packages: VMM, container stack, image tools, kernel build, agent build.
pub const APT_PACKAGES: [&str; 22] = [
    "qemu-system-x86",
    "containerd",
    "runc",
    "umoci",
    "skopeo",
    "busybox-static",
    "containernetworking-plugins",
    // portmap (hostPort) drives iptables.
    "iptables",
    "protobuf-compiler",
    "linux-source-6.1",
    "bc",
    "flex",
    "bison",
    // applies kernel-config/patches to the guest kernel source.
    "patch",
    "libelf-dev",
    "libssl-dev",
    "libseccomp-dev",
    "libcap-ng-dev",
    "cpio",
    "xz-utils",
    "make",
    "gcc",
];
/// The virtiofsd release series husk is tested with.
const VIRTIOFSD_VERSION: &str = "~1.14";
const DPKG_TIMEOUT: Duration = Duration::from_secs(60);
const APT_UPDATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const APT_INSTALL_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Compiling virtiofsd or cargo-nextest on 2 busy cores.
const CARGO_INSTALL_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Installs missing apt packages, virtiofsd, cargo-nextest and containerd 2.x (cache).
pub fn run(ws: &Workspace) -> Result<()> {
    apt_packages()?;
    virtiofsd(ws)?;
    nextest(ws)?;
    containerd2::ensure(&ws.cache)?;
    Ok(())
}

/// Packages of `names` that dpkg does not report as installed (`ii`).
fn missing_packages(names: &[&str]) -> Result<Vec<String>> {
    // dpkg-query exits 1 when some package is unknown; its output is still complete.
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${db:Status-Abbrev}\n"])
        .args(names)
        .timeout(DPKG_TIMEOUT)
        .output()
        .context("asking dpkg which packages are installed (is this Debian?)")?;
    let text = out.stdout_text();
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(names
        .iter()
        .filter(|n| !installed.contains(n))
        .map(|n| n.to_string())
        .collect())
}

fn apt_packages() -> Result<()> {
    step(format!("checking {} apt packages", APT_PACKAGES.len()));
    let missing = missing_packages(&APT_PACKAGES)?;
    if missing.is_empty() {
        note("all installed");
        return Ok(());
    }
    note(format!("missing: {}", missing.join(" ")));
    if !super::is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get install {}` or re-run as root",
            missing.join(" ")
        );
    }
    step("apt-get update");
    Cmd::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(APT_UPDATE_TIMEOUT)
        .run_inherit()
        .context("refreshing the apt package lists")?;
    step(format!("apt-get install -y {}", missing.join(" ")));
    Cmd::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(APT_INSTALL_TIMEOUT)
        .run_inherit()
        .context("installing the missing apt packages")?;
    let still = missing_packages(&APT_PACKAGES)?;
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn virtiofsd(ws: &Workspace) -> Result<()> {
    let bin = ws.virtiofsd();
    step("checking virtiofsd");
    if bin.is_file() {
        note(format!("present: {}", bin.display()));
        return Ok(());
    }
    step(format!(
        "cargo install --locked virtiofsd --version {VIRTIOFSD_VERSION} --root {} (a few minutes)",
        ws.tools_dir().display()
    ));
    ws.cargo()
        .args([
            "install",
            "--locked",
            "virtiofsd",
            "--version",
            VIRTIOFSD_VERSION,
            "--root",
        ])
        .arg(ws.tools_dir())
        // Build it in its own target dir, not the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .timeout(CARGO_INSTALL_TIMEOUT)
        .run_inherit()
        .context("installing virtiofsd (it needs libseccomp-dev and libcap-ng-dev)")?;
    if !bin.is_file() {
        bail!(
            "cargo install reported success but {} does not exist",
            bin.display()
        );
    }
    Ok(())
}

fn nextest(ws: &Workspace) -> Result<()> {
    step("checking cargo-nextest");
    let present = ws
        .cargo()
        .args(["nextest", "--version"])
        .timeout(DPKG_TIMEOUT)
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        note("present");
        return Ok(());
    }
    step("cargo install --locked cargo-nextest (several minutes)");
    ws.cargo()
        .args(["install", "--locked", "cargo-nextest"])
        .env_remove("CARGO_TARGET_DIR")
        .timeout(CARGO_INSTALL_TIMEOUT)
        .run_inherit()
        .context("installing cargo-nextest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_knows_installed_and_missing_packages() {
        // husk's machines are Debian: without dpkg, `deps` itself cannot work.
        let missing = missing_packages(&["dpkg", "husk-no-such-package"]).unwrap();
        assert_eq!(missing, ["husk-no-such-package"]);
    }
}
