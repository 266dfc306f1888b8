//! The offline test image: Debian's static busybox with every applet, packed with umoci
//! into an OCI archive tagged `docker.io/library/busybox-local:latest` (a *full*
//! reference: `ctr images import` turns bare tags into `import-<date>:<tag>`, which
//! confuses CRI). Built once per busybox binary and cached in
//! `<cache>/images/busybox-<key>/{image.tar,rootfs/}`; the unpacked `rootfs/` serves
//! tests that need a plain bundle rootfs.
//!
//! The same root with `/bin/sleep 2147483647` as its command is CRI's local pause image
//! ([`PAUSE_IMAGE_REF`], `<cache>/images/pause-<key>/`): containerd's `sandbox_image`
//! points at it, so RunPodSandbox never pulls. Like `registry.k8s.io/pause` it runs as
//! 65535:65535, and like images built FROM scratch by umoci, buildah, ko or apko it has no
//! `PATH`: every CRI test runs such a sandbox. [`SCRATCH_IMAGE_REF`] is an application
//! image of that kind.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cmd::{Cmd, CmdError};

/// The image reference tests run.
pub const IMAGE_REF: &str = "docker.io/library/busybox-local:latest";
/// The local pause image (CRI `sandbox_image`), a full reference like [`IMAGE_REF`].
pub const PAUSE_IMAGE_REF: &str = "docker.io/library/husk-pause:latest";
/// The pause image's command: sleeps as PID 1 (ignoring SIGTERM; CRI stops sandboxes
/// with SIGKILL). Absolute: the image has no `PATH`.
pub const PAUSE_COMMAND: [&str; 2] = ["/bin/sleep", "2147483647"];
/// An application image without `PATH` that runs as [`NOBODY_65535`]: what tools other than
/// docker build FROM scratch.
pub const SCRATCH_IMAGE_REF: &str = "docker.io/library/husk-scratch:latest";
/// The scratch image's command.
pub const SCRATCH_COMMAND: [&str; 2] = ["/bin/sleep", "2147483647"];
/// The user of the pause and scratch images, as `registry.k8s.io/pause` has it.
pub const NOBODY_65535: &str = "65535:65535";
/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// Versions the image recipe; bump when the layout below changes.
const RECIPE: &str = "husk-busybox-image-2";
/// umoci steps are quick; this bounds a stuck one.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// The image's `PATH`.
const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors building the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// busybox is missing or not static.
    #[error(
        "{BUSYBOX} is unusable for the test image ({reason}); install busybox-static (`cargo xtask deps`)"
    )]
    Busybox {
        /// What is wrong.
        reason: String,
    },
    /// umoci or tar failed.
    #[error("building the busybox test image: {0}")]
    Cmd(#[from] CmdError),
    /// Filesystem work failed.
    #[error("building the busybox test image at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A built, cached test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyboxImage {
    /// `docker.io/library/busybox-local:latest`.
    pub reference: String,
    /// The OCI archive for `ctr images import`.
    pub archive: PathBuf,
    /// The unpacked root filesystem (read-only use).
    pub rootfs: PathBuf,
}

/// What distinguishes the images built here: name (cache directory prefix), reference and
/// command, environment and user.
struct Recipe {
    name: &'static str,
    reference: &'static str,
    cmd: &'static [&'static str],
    /// The image's `PATH` entry; `None` leaves the config without any environment.
    path: Option<&'static str>,
    /// `uid:gid`; `None` runs as root.
    user: Option<&'static str>,
}

const BUSYBOX_RECIPE: Recipe = Recipe {
    name: "busybox",
    reference: IMAGE_REF,
    cmd: &["sh"],
    path: Some(IMAGE_PATH),
    user: None,
};

const PAUSE_RECIPE: Recipe = Recipe {
    name: "pause",
    reference: PAUSE_IMAGE_REF,
    cmd: &PAUSE_COMMAND,
    path: None,
    user: Some(NOBODY_65535),
};

const SCRATCH_RECIPE: Recipe = Recipe {
    name: "scratch",
    reference: SCRATCH_IMAGE_REF,
    cmd: &SCRATCH_COMMAND,
    path: None,
    user: Some(NOBODY_65535),
};

impl BusyboxImage {
    /// Returns the cached image under `cache_root`, building it if needed. Concurrent
    /// callers may both build; the first rename wins and the other result is dropped.
    pub fn ensure(cache_root: &Path) -> Result<Self, ImageError> {
        Self::ensure_recipe(cache_root, &BUSYBOX_RECIPE)
    }

    /// The local pause image ([`PAUSE_IMAGE_REF`]), cached like [`BusyboxImage::ensure`].
    pub fn ensure_pause(cache_root: &Path) -> Result<Self, ImageError> {
        Self::ensure_recipe(cache_root, &PAUSE_RECIPE)
    }

    /// The scratch-style application image ([`SCRATCH_IMAGE_REF`]), cached likewise.
    pub fn ensure_scratch(cache_root: &Path) -> Result<Self, ImageError> {
        Self::ensure_recipe(cache_root, &SCRATCH_RECIPE)
    }

    fn ensure_recipe(cache_root: &Path, recipe: &Recipe) -> Result<Self, ImageError> {
        let busybox = fs::read(BUSYBOX).map_err(|e| ImageError::Busybox {
            reason: e.to_string(),
        })?;
        husk_rootfs::ensure_static_elf(&busybox).map_err(|e| ImageError::Busybox {
            reason: e.to_string(),
        })?;
        let mut h = Sha256::new();
        h.update(RECIPE.as_bytes());
        h.update(b"\n");
        h.update(&busybox);
        if recipe.name != BUSYBOX_RECIPE.name {
            // (The busybox image keeps the key it always had.)
            h.update(
                format!(
                    "\n{}\n{:?}\n{:?}\n{:?}",
                    recipe.reference, recipe.cmd, recipe.path, recipe.user
                )
                .as_bytes(),
            );
        }
        let key = &hex::encode(h.finalize())[..16];
        let images = cache_root.join("images");
        let dir = images.join(format!("{}-{key}", recipe.name));
        let image = Self {
            reference: recipe.reference.to_owned(),
            archive: dir.join("image.tar"),
            rootfs: dir.join("rootfs"),
        };
        if image.archive.is_file() && image.rootfs.is_dir() {
            return Ok(image);
        }
        fs::create_dir_all(&images).map_err(io(&images))?;
        let tmp = images.join(format!(".tmp-{}-{key}-{}", recipe.name, std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        let built = build(&tmp, recipe);
        let stored = built.and_then(|()| match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another test stored the same key first.
            Err(_) if image.archive.is_file() => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        });
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        stored.map(|()| image)
    }
}

fn umoci(args: &[&str]) -> Result<(), CmdError> {
    Cmd::new("umoci")
        .args(args)
        .timeout(STEP_TIMEOUT)
        .checked()
        .map(|_| ())
}

/// Builds `image.tar` and `rootfs/` in `work`.
fn build(work: &Path, recipe: &Recipe) -> Result<(), ImageError> {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let (layout_s, bundle_s) = (layout.to_string_lossy(), bundle.to_string_lossy());
    let image = format!("{layout_s}:{}", recipe.reference);
    umoci(&["init", "--layout", &layout_s])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle_s])?;
    populate(&bundle.join("rootfs"))?;
    umoci(&["repack", "--image", &image, &bundle_s])?;
    let mut config = vec!["config", "--image", &image];
    for word in recipe.cmd {
        config.extend(["--config.cmd", word]);
    }
    match recipe.path {
        Some(path) => config.extend(["--config.env", path]),
        // Whatever umoci's defaults, the config must carry no environment at all.
        None => config.push("--clear=config.env"),
    }
    if let Some(user) = recipe.user {
        config.extend(["--config.user", user]);
    }
    config.extend([
        "--config.workingdir",
        "/",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    ]);
    umoci(&config)?;
    umoci(&["gc", "--layout", &layout_s])?;
    Cmd::new("tar")
        .arg("-C")
        .arg(&layout)
        .args(["-cf"])
        .arg(work.join("image.tar"))
        .arg(".")
        .timeout(STEP_TIMEOUT)
        .checked()?;
    let rootfs = work.join("rootfs");
    fs::rename(bundle.join("rootfs"), &rootfs).map_err(io(&rootfs))?;
    fs::remove_dir_all(&bundle).map_err(io(&bundle))?;
    fs::remove_dir_all(&layout).map_err(io(&layout))?;
    Ok(())
}

/// Fills the image root: busybox, a symlink per applet, the usual directories and
/// minimal `/etc/passwd` and `/etc/group` (with user `husk`, 1000, also in group `wheel`,
/// 10: what the runtime must add for a user named by the image).
fn populate(root: &Path) -> Result<(), ImageError> {
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
    ] {
        let p = root.join(dir);
        fs::create_dir_all(&p).map_err(io(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io(&p))?;
    }
    let bin = root.join("bin/busybox");
    fs::copy(BUSYBOX, &bin).map_err(io(&bin))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).map_err(io(&bin))?;
    let applets = Cmd::new(BUSYBOX).arg("--list").checked()?.stdout_text();
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        symlink("busybox", &link).map_err(io(&link))?;
    }
    for (file, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n\
             husk:x:1000:1000:husk:/:/bin/sh\n",
        ),
        (
            "etc/group",
            "root:x:0:\nwheel:x:10:husk\nhusk:x:1000:\nnogroup:x:65534:\n",
        ),
    ] {
        let p = root.join(file);
        fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(())
}

/// A guest initramfs of the host's static busybox (`/bin/busybox`) and `init` as `/init`,
/// for test guests and test hosts that need a shell but no agent. Callers may add entries.
pub fn busybox_initramfs(init: &str) -> std::io::Result<husk_rootfs::Initramfs> {
    use husk_rootfs::{Entry, Initramfs};
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {BUSYBOX}: {e}")))?;
    Ok(Initramfs::skeleton()
        .with(Entry::Directory {
            path: "/bin".into(),
            perm: 0o755,
        })
        .with(Entry::File {
            path: "/bin/busybox".into(),
            perm: 0o755,
            data: busybox,
        })
        .with(Entry::File {
            path: "/init".into(),
            perm: 0o755,
            data: init.as_bytes().to_vec(),
        }))
}
