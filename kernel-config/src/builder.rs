//! Building the guest kernel into the cache (or finding it there).
//!
//! Steps (mirroring the reference `kbuild.sh`): extract the source into
//! `<cache>/kernel/build/src`, apply the recipe's patches (`patch -p1`), write the merged fragments, `KCONFIG_ALLCONFIG=<merged>
//! make allnoconfig`, `make olddefconfig`, verify every request landed, `make -j<n>
//! bzImage`, then copy `bzImage`, `vmlinux`, `.config` into a temporary directory that is
//! renamed to `<cache>/kernel/<key>` — a cache entry is complete or absent, never partial.
//! A lock file serialises concurrent builds on one machine.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::cache::KernelArtifacts;
use crate::exec::{ExecError, run_logged};
use crate::fragments::{FragmentSet, unmet_requests};
use crate::key::{CacheKey, cache_key};
use crate::patches::PatchSet;
use crate::source::KernelSource;

/// Extracting ~140 MB of xz on a busy 2-core machine takes a few minutes.
const EXTRACT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// `allnoconfig` / `olddefconfig` build kconfig and run it: about a minute.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `patch` on one small patch takes milliseconds.
const PATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// A cold build is ~16 min on 2 cores; CI allows 90 min for everything.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(80 * 60);

/// Errors from [`KernelBuild::ensure`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A build tool failed or timed out.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Filesystem work in the cache failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Taking the build lock failed.
    #[error("locking {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: nix::Error,
    },
    /// Kconfig dropped or changed requested options.
    #[error(
        "the kernel .config ({config}) does not contain {} requested option(s) — a dependency \
         is missing from the fragments or the symbol does not exist in this kernel:\n  {}",
        missing.len(),
        missing.join("\n  ")
    )]
    UnmetRequests {
        /// The `.config` checked.
        config: PathBuf,
        /// One line per unmet request.
        missing: Vec<String>,
    },
}

/// Whether [`KernelBuild::ensure`] found the kernel or had to build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Reused `<cache>/kernel/<key>`.
    Cached(KernelArtifacts),
    /// Built and stored it.
    Built(KernelArtifacts),
}

impl BuildOutcome {
    /// The kernel files, either way.
    pub fn artifacts(&self) -> &KernelArtifacts {
        match self {
            BuildOutcome::Cached(a) | BuildOutcome::Built(a) => a,
        }
    }
}

/// One kernel recipe: a source, fragments and the cache they build into.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    source: KernelSource,
    fragments: FragmentSet,
    patches: PatchSet,
    cache_dir: PathBuf,
    jobs: usize,
    log_name: String,
}

impl KernelBuild {
    /// A recipe building into `kernel_cache_dir` (usually `<cache>/kernel`), using all
    /// available CPUs.
    pub fn new(source: KernelSource, fragments: FragmentSet, kernel_cache_dir: PathBuf) -> Self {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            source,
            fragments,
            patches: PatchSet::default(),
            cache_dir: kernel_cache_dir,
            jobs,
            log_name: "build.log".into(),
        }
    }

    /// Names the recipe (e.g. `outer`): its log becomes `build-<name>.log`, so building a
    /// second flavour does not overwrite the first one's log. The shared work directory
    /// and lock are unchanged (flavours build one after the other).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.log_name = format!("build-{name}.log");
        self
    }

    /// Patches the extracted source with `patches` before configuring it.
    #[must_use]
    pub fn with_patches(mut self, patches: PatchSet) -> Self {
        self.patches = patches;
        self
    }

    /// The recipe's cache key.
    pub fn key(&self) -> CacheKey {
        cache_key(&self.source.version, &self.fragments, &self.patches)
    }

    /// Where this recipe's kernel is (or will be) cached.
    pub fn artifacts(&self) -> KernelArtifacts {
        KernelArtifacts {
            dir: self.cache_dir.join(self.key().as_str()),
        }
    }

    /// The build's log file.
    pub fn log_file(&self) -> PathBuf {
        self.work_dir().join(&self.log_name)
    }

    fn work_dir(&self) -> PathBuf {
        self.cache_dir.join("build")
    }

    /// Returns the cached kernel, building it first if the key is not cached. `progress`
    /// receives one line per step.
    pub fn ensure(&self, progress: &mut dyn FnMut(&str)) -> Result<BuildOutcome, BuildError> {
        let artifacts = self.artifacts();
        if artifacts.is_complete() {
            self.verify(&artifacts.config())?;
            return Ok(BuildOutcome::Cached(artifacts));
        }
        mkdir(&self.cache_dir)?;
        let _lock = self.lock(progress)?;
        // Another process may have finished the same build while we waited.
        if artifacts.is_complete() {
            self.verify(&artifacts.config())?;
            return Ok(BuildOutcome::Cached(artifacts));
        }
        self.build(&artifacts, progress)?;
        Ok(BuildOutcome::Built(artifacts))
    }

    fn lock(&self, progress: &mut dyn FnMut(&str)) -> Result<Flock<File>, BuildError> {
        let path = self.cache_dir.join("build.lock");
        let file = File::create(&path).map_err(|source| BuildError::Io {
            what: "creating lock file",
            path: path.clone(),
            source,
        })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, nix::Error::EWOULDBLOCK)) => {
                progress(&format!(
                    "another kernel build holds {}; waiting for it",
                    path.display()
                ));
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, source)| BuildError::Lock { path, source })
            }
            Err((_, source)) => Err(BuildError::Lock { path, source }),
        }
    }

    fn build(
        &self,
        artifacts: &KernelArtifacts,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), BuildError> {
        let work = self.work_dir();
        let src = work.join("src");
        let merged = work.join("merged.conf");
        let log = self.log_file();
        mkdir(&work)?;
        if src.exists() {
            fs::remove_dir_all(&src).map_err(|source| BuildError::Io {
                what: "removing old kernel tree",
                path: src.clone(),
                source,
            })?;
        }
        mkdir(&src)?;
        fs::write(&log, b"").map_err(|source| BuildError::Io {
            what: "creating",
            path: log.clone(),
            source,
        })?;

        progress(&format!(
            "extracting {} into {}",
            self.source.tarball.display(),
            src.display()
        ));
        run_logged(
            Command::new("tar")
                .arg("-xf")
                .arg(&self.source.tarball)
                .arg("-C")
                .arg(&src)
                .arg("--strip-components=1"),
            EXTRACT_TIMEOUT,
            &log,
        )?;

        self.apply_patches(&work, &src, &log, progress)?;

        fs::write(&merged, self.fragments.merged()).map_err(|source| BuildError::Io {
            what: "writing merged fragments",
            path: merged.clone(),
            source,
        })?;
        progress("configuring: make allnoconfig with the fragments, then make olddefconfig");
        run_logged(
            make(&src)
                .env("KCONFIG_ALLCONFIG", &merged)
                .arg("allnoconfig"),
            CONFIG_TIMEOUT,
            &log,
        )?;
        run_logged(make(&src).arg("olddefconfig"), CONFIG_TIMEOUT, &log)?;
        self.verify(&src.join(".config"))?;

        progress(&format!(
            "compiling bzImage with make -j{} (about 16 minutes on 2 cores; log: {})",
            self.jobs,
            log.display()
        ));
        run_logged(
            make(&src).arg(format!("-j{}", self.jobs)).arg("bzImage"),
            COMPILE_TIMEOUT,
            &log,
        )?;

        progress(&format!(
            "storing the kernel in {}",
            artifacts.dir.display()
        ));
        self.store(&src, artifacts)
    }

    /// Applies each patch in order; one that does not apply cleanly fails the build.
    fn apply_patches(
        &self,
        work: &Path,
        src: &Path,
        log: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), BuildError> {
        for patch in self.patches.patches() {
            progress(&format!("applying patch {}", patch.name));
            let file = work.join(&patch.name);
            fs::write(&file, &patch.contents).map_err(|source| BuildError::Io {
                what: "writing patch",
                path: file.clone(),
                source,
            })?;
            run_logged(
                Command::new("patch")
                    .current_dir(src)
                    .args([
                        "-p1",
                        "--forward",
                        "--batch",
                        "--no-backup-if-mismatch",
                        "-i",
                    ])
                    .arg(&file),
                PATCH_TIMEOUT,
                log,
            )?;
        }
        Ok(())
    }

    /// Fails unless every request of the fragments is satisfied by `config`.
    fn verify(&self, config: &Path) -> Result<(), BuildError> {
        let text = fs::read_to_string(config).map_err(|source| BuildError::Io {
            what: "reading",
            path: config.to_owned(),
            source,
        })?;
        let missing = unmet_requests(&self.fragments.requests(), &text);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(BuildError::UnmetRequests {
                config: config.to_owned(),
                missing,
            })
        }
    }

    /// Copies the results into a temporary directory and renames it into place.
    fn store(&self, src: &Path, artifacts: &KernelArtifacts) -> Result<(), BuildError> {
        let tmp = self
            .cache_dir
            .join(format!(".tmp-{}-{}", self.key(), std::process::id()));
        if tmp.exists() {
            remove_dir(&tmp)?;
        }
        mkdir(&tmp)?;
        let files = [
            (src.join("arch/x86/boot/bzImage"), "bzImage"),
            (src.join("vmlinux"), "vmlinux"),
            (src.join(".config"), ".config"),
        ];
        for (from, name) in files {
            fs::copy(&from, tmp.join(name)).map_err(|source| BuildError::Io {
                what: "copying kernel artifact",
                path: from.clone(),
                source,
            })?;
        }
        if let Err(source) = fs::rename(&tmp, &artifacts.dir) {
            remove_dir(&tmp)?;
            // Someone else stored the same key first: theirs is as good as ours.
            if !artifacts.is_complete() {
                return Err(BuildError::Io {
                    what: "moving the built kernel into",
                    path: artifacts.dir.clone(),
                    source,
                });
            }
        }
        Ok(())
    }
}

fn make(src: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(src);
    cmd
}

fn mkdir(path: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(path).map_err(|source| BuildError::Io {
        what: "creating directory",
        path: path.to_owned(),
        source,
    })
}

fn remove_dir(path: &Path) -> Result<(), BuildError> {
    fs::remove_dir_all(path).map_err(|source| BuildError::Io {
        what: "removing",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragments::Fragment;

    fn recipe(cache: &Path) -> KernelBuild {
        KernelBuild::new(
            KernelSource {
                tarball: "/nonexistent.tar.xz".into(),
                version: "1.0".into(),
            },
            FragmentSet::from_fragments(vec![Fragment {
                name: "a.conf".into(),
                contents: b"CONFIG_A=y\n".to_vec(),
            }]),
            cache.to_owned(),
        )
    }

    #[test]
    fn a_complete_cache_entry_is_reused_without_building() {
        let cache = std::env::temp_dir().join(format!("husk-kcache-{}", std::process::id()));
        let build = recipe(&cache);
        let a = build.artifacts();
        fs::create_dir_all(&a.dir).unwrap();
        fs::write(a.bz_image(), b"bz").unwrap();
        fs::write(a.vmlinux(), b"elf").unwrap();
        fs::write(a.config(), b"CONFIG_A=y\n").unwrap();
        // The tarball does not exist: any build attempt would fail.
        let out = build.ensure(&mut |_| {}).unwrap();
        assert_eq!(out, BuildOutcome::Cached(a.clone()));

        // A cached .config that lost a request is reported, naming the symbol.
        fs::write(a.config(), b"# CONFIG_A is not set\n").unwrap();
        let err = build.ensure(&mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("CONFIG_A=y"), "{err}");
        fs::remove_dir_all(&cache).unwrap();
    }

    /// A fake kernel tree whose Makefile imitates the targets the build uses, so the
    /// whole build path (extract, configure, verify, compile, store) runs in a second.
    fn fake_source(dir: &Path, drop_symbol: &str) -> KernelSource {
        let tree = dir.join("linux-fake");
        fs::create_dir_all(&tree).unwrap();
        let makefile = format!(
            "allnoconfig:\n\tgrep '^CONFIG_' $(KCONFIG_ALLCONFIG) | grep -v '{drop_symbol}' > .config\n\
             olddefconfig:\n\ttest -f .config\n\
             bzImage:\n\tmkdir -p arch/x86/boot && echo bz > arch/x86/boot/bzImage && echo elf > vmlinux\n"
        );
        fs::write(tree.join("Makefile"), makefile).unwrap();
        let tarball = dir.join("linux-fake.tar");
        let status = Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir)
            .arg("linux-fake")
            .status()
            .unwrap();
        assert!(status.success());
        KernelSource {
            tarball,
            version: "0.0-fake".into(),
        }
    }

    fn fragments() -> FragmentSet {
        FragmentSet::from_fragments(vec![Fragment {
            name: "a.conf".into(),
            contents: b"CONFIG_A=y\nCONFIG_B=y\n".to_vec(),
        }])
    }

    #[test]
    fn builds_stores_atomically_and_then_reuses() {
        let dir = std::env::temp_dir().join(format!("husk-kbuild-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let build = KernelBuild::new(fake_source(&dir, "NOTHING"), fragments(), dir.join("cache"));
        let mut steps = Vec::new();
        let out = build.ensure(&mut |m| steps.push(m.to_owned())).unwrap();
        let a = build.artifacts();
        assert_eq!(out, BuildOutcome::Built(a.clone()));
        assert!(a.is_complete());
        assert_eq!(fs::read(a.bz_image()).unwrap(), b"bz\n");
        assert_eq!(
            fs::read_to_string(a.config()).unwrap(),
            "CONFIG_A=y\nCONFIG_B=y\n"
        );
        assert!(
            steps.iter().any(|s| s.starts_with("compiling")),
            "{steps:?}"
        );
        // No temporary directories are left beside the entry.
        let names: Vec<String> = fs::read_dir(dir.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
        // Second time: cached, nothing runs.
        let mut steps = Vec::new();
        let out = build.ensure(&mut |m| steps.push(m.to_owned())).unwrap();
        assert_eq!(out, BuildOutcome::Cached(a));
        assert!(steps.is_empty(), "{steps:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dropped_option_fails_the_build_naming_it() {
        let dir = std::env::temp_dir().join(format!("husk-kbuild-drop-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let build = KernelBuild::new(
            fake_source(&dir, "CONFIG_B"),
            fragments(),
            dir.join("cache"),
        );
        let err = build.ensure(&mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BuildError::UnmetRequests { .. }), "{msg}");
        assert!(
            msg.contains("CONFIG_B=y") && !msg.contains("CONFIG_A=y"),
            "{msg}"
        );
        assert!(
            !build.artifacts().dir.exists(),
            "a failed build must not be cached"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn patches_apply_before_the_build_and_a_stale_one_fails_it() {
        let dir = std::env::temp_dir().join(format!("husk-kbuild-patch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let patch = |from: &str| {
            PatchSet::from_patches(vec![Fragment {
                name: "0001-x.patch".into(),
                contents: format!(
                    "--- a/Makefile\n+++ b/Makefile\n@@ -5,2 +5,2 @@\n bzImage:\n-\tmkdir -p {from}\n+\tmkdir -p arch/x86/boot && echo patched > vmlinux && echo bz > arch/x86/boot/bzImage\n"
                )
                .into_bytes(),
            }])
        };
        let source = fake_source(&dir, "NOTHING");
        let good = KernelBuild::new(source.clone(), fragments(), dir.join("cache")).with_patches(
            patch("arch/x86/boot && echo bz > arch/x86/boot/bzImage && echo elf > vmlinux"),
        );
        assert_ne!(
            good.key(),
            KernelBuild::new(source.clone(), fragments(), dir.join("cache")).key()
        );
        good.ensure(&mut |_| {}).unwrap();
        assert_eq!(fs::read(good.artifacts().vmlinux()).unwrap(), b"patched\n");

        let stale = KernelBuild::new(source, fragments(), dir.join("cache"))
            .with_patches(patch("somewhere/else"));
        let err = stale.ensure(&mut |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::Exec(_)), "{err}");
        assert!(
            !stale.artifacts().dir.exists(),
            "a failed build must not be cached"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
