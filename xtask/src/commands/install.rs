//! `cargo xtask install`: puts husk where containerd and the default config expect it,
//! and registers runtime handler `husk` in containerd's CRI configuration (see [`cri`]).

mod cri;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use husk_tests::containerd::{binary_version, major_version};
use husk_tests::image::PAUSE_IMAGE_REF;
use husk_tests::{BusyboxImage, Cmd, SHIM_BINARY};

use super::build::{self, copy_atomic};
use crate::ui::{note, step};
use crate::workspace::Workspace;

const BIN_DIR: &str = "/usr/local/bin";
const SHARE_DIR: &str = "/usr/share/husk";
const LIBEXEC_DIR: &str = "/usr/local/libexec/husk";
const CONFIG_FILE: &str = "/etc/husk/config.toml";
const CONTAINERD_DROPIN_DIR: &str = "/etc/containerd/conf.d";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Kept once, before install first edits the containerd config.
const CONTAINERD_CONFIG_BACKUP: &str = "/etc/containerd/config.toml.pre-husk";
const DROPIN_NAME: &str = "containerd-husk.toml";
/// The pause image archive, for importing into containerd later.
const PAUSE_ARCHIVE: &str = "pause-image.tar";
/// containerd's socket, where the pause image is imported if containerd runs.
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// CRI's containerd namespace.
const CRI_NAMESPACE: &str = "k8s.io";
const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds, then installs the shim, husk-vmm, guest kernel, initramfs, virtiofsd, the default
/// config (never overwriting an existing one), the pause image and the containerd CRI
/// registration.
pub fn run(ws: &Workspace) -> Result<()> {
    let default_config = ws.root.join("deploy/config.toml");
    let dropin = ws.root.join("deploy").join(DROPIN_NAME);
    check_inputs(&default_config, &dropin)?;
    if !super::is_root() {
        bail!("install writes to /usr/local, /usr/share and /etc: run it as root");
    }
    let version = binary_version(Path::new("containerd"))
        .context("husk registers itself with containerd (install it: `cargo xtask deps`)")?;
    let major = major_version(&version).unwrap_or(1);
    let shipped = std::fs::read_to_string(&dropin)
        .with_context(|| format!("reading {}", dropin.display()))?;
    let main = match std::fs::read_to_string(CONTAINERD_CONFIG) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context(format!("reading {CONTAINERD_CONFIG}")),
    };
    // Compute the containerd config changes first: a config install cannot handle fails
    // before anything is installed.
    let glob = format!("{CONTAINERD_DROPIN_DIR}/*.toml");
    let new_main = cri::with_import(&main, &glob)
        .with_context(|| format!("adding the drop-in directory to {CONTAINERD_CONFIG}"))?;
    let dropin_text = cri::dropin(&shipped, &main, major, PAUSE_IMAGE_REF)
        .context("generating the containerd drop-in")?;

    let a = build::run(ws)?;
    let pause = BusyboxImage::ensure_pause(&ws.cache)?;
    step("installing");
    let pause_archive = install_files(&a, &pause, &default_config)?;

    step(format!(
        "registering runtime handler `husk` with containerd {version}"
    ));
    let dropin_path = Path::new(CONTAINERD_DROPIN_DIR).join(DROPIN_NAME);
    write_atomic(&dropin_text, &dropin_path)?;
    note(format!(
        "{} (sandbox_image = {PAUSE_IMAGE_REF}{})",
        dropin_path.display(),
        if major < 2 {
            "; carries the CRI settings of the main config, which containerd 1.x would \
             otherwise drop"
        } else {
            ""
        }
    ));
    if let Some(text) = new_main {
        if !main.is_empty() && !Path::new(CONTAINERD_CONFIG_BACKUP).exists() {
            write_atomic(&main, Path::new(CONTAINERD_CONFIG_BACKUP))?;
            note(format!(
                "saved the previous config as {CONTAINERD_CONFIG_BACKUP}"
            ));
        }
        write_atomic(&text, Path::new(CONTAINERD_CONFIG))?;
        note(format!("{CONTAINERD_CONFIG}: imports {glob}"));
    }
    import_pause(&pause_archive);
    if major >= 2 {
        note(sandbox_api_note(&dropin_path));
    }
    note("restart containerd to pick up runtime handler `husk`: systemctl restart containerd");
    Ok(())
}

/// How to switch containerd 2.x's CRI to husk's Sandbox API (pods without a pause
/// container). Not the default: containerd before 2.4 cannot give such pods runtime options.
fn sandbox_api_note(dropin: &Path) -> String {
    format!(
        "optional, containerd 2.x: to run husk pods without a pause container (the shim \
         serves containerd's Sandbox API), add `sandboxer = \"shim\"` to the husk runtime \
         table in {}; with containerd older than 2.4 also delete its `options` table (those \
         versions read a Sandbox API pod's runtime options as runc's and fail StartContainer; \
         husk then reads {})",
        dropin.display(),
        CONFIG_FILE
    )
}

/// The repository files install needs exist (checked before building or touching the
/// system).
fn check_inputs(default_config: &Path, dropin: &Path) -> Result<()> {
    for (file, what) in [
        (default_config, "the default husk config"),
        (
            dropin,
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
    Ok(())
}

/// The binaries, guest images, virtiofsd, the pause image and (if absent) the config;
/// returns where the pause image archive went.
fn install_files(
    a: &husk_tests::Artifacts,
    pause: &BusyboxImage,
    default_config: &Path,
) -> Result<std::path::PathBuf> {
    let pause_archive = Path::new(SHARE_DIR).join(PAUSE_ARCHIVE);
    let installs = [
        (a.shim(), Path::new(BIN_DIR).join(SHIM_BINARY), 0o755),
        // Beside the shim, where `hypervisor.vmm_path = "husk-vmm"` finds it.
        (
            a.dir().join(husk_tests::nested::VMM_BINARY),
            Path::new(BIN_DIR).join(husk_tests::nested::VMM_BINARY),
            0o755,
        ),
        (a.kernel(), Path::new(SHARE_DIR).join("vmlinuz"), 0o644),
        (a.vmlinux(), Path::new(SHARE_DIR).join("vmlinux"), 0o644),
        (a.initrd(), Path::new(SHARE_DIR).join("initrd.img"), 0o644),
        (
            a.virtiofsd(),
            Path::new(LIBEXEC_DIR).join("virtiofsd"),
            0o755,
        ),
        (pause.archive.clone(), pause_archive.clone(), 0o644),
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
        copy_atomic(default_config, config, 0o644)?;
        note(CONFIG_FILE);
    }

    Ok(pause_archive)
}

/// Imports the pause image into a running containerd (namespace `k8s.io`), or says how.
fn import_pause(archive: &Path) {
    let how = format!("ctr -n {CRI_NAMESPACE} images import {}", archive.display());
    if !Path::new(CONTAINERD_SOCKET).exists() {
        note(format!(
            "containerd is not running: after starting it, import the pause image: {how}"
        ));
        return;
    }
    let imported = Cmd::new("ctr")
        .args(["-n", CRI_NAMESPACE, "images", "import"])
        .arg(archive)
        .timeout(CTR_TIMEOUT)
        .checked();
    match imported {
        Ok(_) => note(format!(
            "imported {PAUSE_IMAGE_REF} into containerd ({CRI_NAMESPACE})"
        )),
        Err(e) => note(format!(
            "warning: importing the pause image failed ({e}); run `{how}` — without it CRI \
             would try to pull {PAUSE_IMAGE_REF}"
        )),
    }
}

/// Writes `text` to `to` through a temporary file and a rename.
fn write_atomic(text: &str, to: &Path) -> Result<()> {
    let dir = to.parent().context("destination has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".husk-install-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    copy_atomic(&tmp, to, 0o644)?;
    std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))
}
