//! `cargo xtask install`: puts husk where containerd and the default config expect it.

use std::path::Path;

use anyhow::{Result, bail};
use husk_tests::SHIM_BINARY;

use super::build::{self, copy_atomic};
use crate::ui::{note, step};
use crate::workspace::Workspace;

const BIN_DIR: &str = "/usr/local/bin";
const SHARE_DIR: &str = "/usr/share/husk";
const LIBEXEC_DIR: &str = "/usr/local/libexec/husk";
const CONFIG_FILE: &str = "/etc/husk/config.toml";
const CONTAINERD_DROPIN_DIR: &str = "/etc/containerd/conf.d";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const DROPIN_NAME: &str = "containerd-husk.toml";

/// Builds, then installs the shim, guest kernel, initramfs, virtiofsd, the default
/// config (never overwriting an existing one) and the containerd drop-in.
pub fn run(ws: &Workspace) -> Result<()> {
    let default_config = ws.root.join("deploy/config.toml");
    let dropin = ws.root.join("deploy").join(DROPIN_NAME);
    // Check the inputs before building or touching the system.
    for (file, what) in [
        (&default_config, "the default husk config"),
        (
            &dropin,
            "the containerd drop-in registering runtime handler `husk`",
        ),
    ] {
        if !file.is_file() {
            bail!(
                "{} ({what}) is missing from the repository; it is needed to install husk",
                file.display()
            );
        }
    }
    if !super::is_root() {
        bail!("install writes to /usr/local, /usr/share and /etc: run it as root");
    }

    let a = build::run(ws)?;
    step("installing");
    let installs = [
        (a.shim(), Path::new(BIN_DIR).join(SHIM_BINARY), 0o755),
        (a.kernel(), Path::new(SHARE_DIR).join("vmlinuz"), 0o644),
        (a.vmlinux(), Path::new(SHARE_DIR).join("vmlinux"), 0o644),
        (a.initrd(), Path::new(SHARE_DIR).join("initrd.img"), 0o644),
        (
            a.virtiofsd(),
            Path::new(LIBEXEC_DIR).join("virtiofsd"),
            0o755,
        ),
        (
            dropin.clone(),
            Path::new(CONTAINERD_DROPIN_DIR).join(DROPIN_NAME),
            0o644,
        ),
    ];
    for (from, to, mode) in &installs {
        copy_atomic(from, to, *mode)?;
        note(to.display().to_string());
    }
    let config = Path::new(CONFIG_FILE);
    if config.exists() {
        note(format!(
            "kept the existing {CONFIG_FILE} (not overwritten); compare it with {}",
            default_config.display()
        ));
    } else {
        copy_atomic(&default_config, config, 0o644)?;
        note(CONFIG_FILE);
    }
    let main_config = std::fs::read_to_string(CONTAINERD_CONFIG).unwrap_or_default();
    if !main_config.contains("conf.d") {
        note(format!(
            "note: containerd reads {CONTAINERD_DROPIN_DIR} only if {CONTAINERD_CONFIG} has \
             `imports = [\"{CONTAINERD_DROPIN_DIR}/*.toml\"]`; add it, then restart containerd"
        ));
    }
    note("restart containerd to pick up runtime handler `husk`: systemctl restart containerd");
    Ok(())
}
