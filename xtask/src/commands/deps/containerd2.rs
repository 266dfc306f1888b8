//! containerd 2.x for the tests that run husk under it (`tests/tests/ctr2_*.rs`).
//!
//! Debian 12 ships containerd 1.6; Debian sid has 2.x, and its binaries link only libc, so
//! they run here. Without touching the system's apt configuration or state, a private apt
//! directory under `<cache>/containerd2/apt/` (its own sources list with only sid, package
//! lists, cache and an empty dpkg status) is used to `apt-get update` and
//! `apt-get download containerd=<newest 2.x>`. `dpkg-deb -x` unpacks the package and only
//! `usr/bin/containerd` and `usr/bin/ctr` are kept (the package's shim is runc's), in
//! `<cache>/containerd2/<version>/usr/bin/`. `<cache>/containerd2/current` names that
//! version; the tests find the binaries through it, or through `HUSK_CONTAINERD2`, which
//! `cargo xtask test` sets.
//!
//! Once a version is unpacked nothing is downloaded again (not even the package lists);
//! delete `<cache>/containerd2/` to fetch the newest 2.x again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use husk_tests::Cmd;
use husk_tests::containerd::{
    CONTAINERD2_BINARIES, CONTAINERD2_CACHE_DIR, CONTAINERD2_CURRENT, binary_version,
    containerd2_bin_dir, containerd2_from_cache, major_version, missing_containerd2_binaries,
};

use crate::ui::{note, step};

/// Only Debian sid: it is where containerd 2.x is.
const SOURCES: &str = "deb http://deb.debian.org/debian sid main\n";
const PACKAGE: &str = "containerd";
/// The oldest major version accepted.
const MIN_MAJOR: u32 = 2;
/// sid's package lists are ~25 MB.
const APT_UPDATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The package is ~30 MB.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const EXTRACT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const QUERY_TIMEOUT: Duration = Duration::from_secs(2 * 60);

/// Makes sure containerd 2.x is unpacked in the cache; returns the directory with its
/// `containerd` and `ctr`.
pub fn ensure(cache: &Path) -> Result<PathBuf> {
    step(format!(
        "checking containerd 2.x (from Debian sid, for the containerd 2 tests) in {}",
        cache.join(CONTAINERD2_CACHE_DIR).display()
    ));
    if let Some(dir) = reuse(cache)? {
        return Ok(dir);
    }
    fetch(cache)
}

/// The recorded version if it is complete and runs, else the newest complete version
/// directory (recorded as current); `None` if there is none.
fn reuse(cache: &Path) -> Result<Option<PathBuf>> {
    let base = cache.join(CONTAINERD2_CACHE_DIR);
    if let Ok(dir) = containerd2_from_cache(cache) {
        match check_binaries(&dir) {
            Ok(version) => {
                note(format!(
                    "present: containerd {version} in {}",
                    dir.display()
                ));
                return Ok(Some(dir));
            }
            Err(e) => note(format!(
                "{} is unusable ({e:#}); looking further",
                dir.display()
            )),
        }
    }
    let Ok(entries) = fs::read_dir(&base) else {
        return Ok(None);
    };
    let mut best: Option<(String, String)> = None;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "apt" || name == CONTAINERD2_CURRENT {
            continue;
        }
        let dir = containerd2_bin_dir(cache, &name);
        if !missing_containerd2_binaries(&dir).is_empty() {
            continue;
        }
        let Ok(version) = check_binaries(&dir) else {
            continue;
        };
        let newer = match &best {
            None => true,
            Some((best_name, _)) => debian_version_gt(&name, best_name)?,
        };
        if newer {
            best = Some((name, version));
        }
    }
    let Some((name, version)) = best else {
        return Ok(None);
    };
    write_current(&base, &name)?;
    let dir = containerd2_bin_dir(cache, &name);
    note(format!(
        "present: containerd {version} in {}",
        dir.display()
    ));
    Ok(Some(dir))
}

/// `containerd --version` of the unpacked binaries says 2.x; returns the version.
fn check_binaries(dir: &Path) -> Result<String> {
    let missing = missing_containerd2_binaries(dir);
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}", dir.display());
    }
    let containerd = dir.join("containerd");
    let version = binary_version(&containerd)?;
    if major_version(&version).is_none_or(|m| m < MIN_MAJOR) {
        bail!(
            "{} reports version {version}, not {MIN_MAJOR}.x",
            containerd.display()
        );
    }
    Ok(version)
}

/// The private apt directory: sources, lists, cache and an empty dpkg status, so neither
/// the system's sources nor its state are used or changed.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn prepare(dir: PathBuf) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial"] {
            let path = dir.join(d);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(&sources, SOURCES).with_context(|| format!("writing {}", sources.display()))?;
        let status = dir.join("status");
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;
        Ok(Self { dir })
    }

    /// `program` (apt-get, apt-cache) pointed at the private directory.
    fn cmd(&self, program: &str) -> Cmd {
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        let mut cmd = Cmd::new(program)
            .arg("-o")
            .arg(opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(opt("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(opt("Dir::State::status", &self.dir.join("status")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.dir.join("cache")))
            // Only the Packages lists are needed, not the AppStream metadata.
            .args([
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive");
        if crate::commands::is_root() {
            // Root's cache is not readable by apt's sandbox user `_apt`; without this
            // apt warns and downloads as root anyway.
            cmd = cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }
}

/// apt-get update (private lists), download the newest 2.x, unpack and keep the binaries.
fn fetch(cache: &Path) -> Result<PathBuf> {
    let base = cache.join(CONTAINERD2_CACHE_DIR);
    let apt = PrivateApt::prepare(base.join("apt"))?;
    step("apt-get update of a private Debian sid package list (system apt config untouched)");
    apt.cmd("apt-get")
        .arg("update")
        .timeout(APT_UPDATE_TIMEOUT)
        .run_inherit()
        .with_context(|| {
            format!(
                "fetching Debian sid's package lists into {} failed; check that \
                 deb.debian.org is reachable (the system's apt sources are not used), then \
                 re-run `cargo xtask deps`",
                apt.dir.display()
            )
        })?;

    let version = newest_version(&apt)?;
    let dir_name = dir_name(&version);
    step(format!("apt-get download {PACKAGE}={version}"));
    remove_stale_fetches(&base);
    let work = base.join(format!(".fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = download_and_unpack(&apt, &version, &work).and_then(|staged| {
        install(&staged, &base.join(&dir_name))?;
        write_current(&base, &dir_name)
    });
    let _ = fs::remove_dir_all(&work);
    result?;
    let dir = containerd2_bin_dir(cache, &dir_name);
    let reported = check_binaries(&dir)?;
    note(format!("containerd {reported} in {}", dir.display()));
    Ok(dir)
}

/// Removes `.fetch-<pid>` directories of runs that are gone (killed mid-download).
fn remove_stale_fetches(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".fetch-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The newest `containerd` version of major >= 2 in the private lists.
fn newest_version(apt: &PrivateApt) -> Result<String> {
    let out = apt
        .cmd("apt-cache")
        .args(["madison", PACKAGE])
        .timeout(QUERY_TIMEOUT)
        .checked()
        .context("listing the containerd versions Debian sid offers (apt-cache madison)")?;
    let offered = madison_versions(&out.stdout_text());
    let mut newest: Option<&String> = None;
    for v in offered
        .iter()
        .filter(|v| upstream_major(v) >= Some(MIN_MAJOR))
    {
        if newest.is_none_or(|n| debian_version_gt(v, n).unwrap_or(false)) {
            newest = Some(v);
        }
    }
    match newest {
        Some(v) => {
            note(format!("newest containerd 2.x in sid: {v}"));
            Ok(v.clone())
        }
        None => bail!(
            "Debian sid offers no containerd {MIN_MAJOR}.0 or newer (offered: {}); the \
             containerd 2 tests cannot run — check {} or fetch containerd 2.x by hand and set \
             HUSK_CONTAINERD2=<directory with containerd and ctr>",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            },
            apt.dir.join("sources.list").display()
        ),
    }
}

/// Downloads the package into `work` and unpacks it; returns the unpacked tree.
fn download_and_unpack(apt: &PrivateApt, version: &str, work: &Path) -> Result<PathBuf> {
    let download = work.join("download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    // apt-get download writes into the current directory.
    apt.cmd("apt-get")
        .args(["download", &format!("{PACKAGE}={version}")])
        .current_dir(&download)
        .timeout(DOWNLOAD_TIMEOUT)
        .run_inherit()
        .with_context(|| {
            format!(
                "downloading {PACKAGE} {version} from Debian sid failed; check that \
                 deb.debian.org is reachable and re-run `cargo xtask deps`"
            )
        })?;
    let deb = fs::read_dir(&download)
        .with_context(|| format!("reading {}", download.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| {
            format!(
                "apt-get download succeeded but left no .deb in {}",
                download.display()
            )
        })?;
    let tree = work.join("tree");
    step(format!("dpkg-deb -x {}", deb.display()));
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .timeout(EXTRACT_TIMEOUT)
        .checked()
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let staged = work.join("staged");
    let bin = staged.join("usr/bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in CONTAINERD2_BINARIES {
        let from = tree.join("usr/bin").join(name);
        if !from.is_file() {
            bail!(
                "{} has no usr/bin/{name}: the package layout changed",
                deb.display()
            );
        }
        fs::rename(&from, bin.join(name))
            .with_context(|| format!("moving {} into {}", from.display(), bin.display()))?;
    }
    check_binaries(&bin).with_context(|| format!("checking the binaries of {}", deb.display()))?;
    Ok(staged)
}

/// Moves the staged tree to `target` (if another run got there first, keeps theirs).
fn install(staged: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        if missing_containerd2_binaries(&target.join("usr/bin")).is_empty() {
            return Ok(());
        }
        fs::remove_dir_all(target).with_context(|| format!("removing {}", target.display()))?;
    }
    fs::rename(staged, target)
        .with_context(|| format!("moving {} to {}", staged.display(), target.display()))
}

/// Writes `<base>/current` atomically.
fn write_current(base: &Path, dir_name: &str) -> Result<()> {
    let current = base.join(CONTAINERD2_CURRENT);
    let tmp = base.join(format!(".{CONTAINERD2_CURRENT}-{}", std::process::id()));
    fs::write(&tmp, format!("{dir_name}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &current).with_context(|| format!("writing {}", current.display()))
}

/// A directory name for a Debian version (an epoch's `:` is not welcome in paths).
fn dir_name(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+.~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Versions from `apt-cache madison` lines (`pkg | version | source`).
fn madison_versions(text: &str) -> Vec<String> {
    let mut versions: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim);
            (cols.next() == Some(PACKAGE)).then(|| cols.next())?
        })
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    versions.dedup();
    versions
}

/// The upstream major version of a Debian version (`2` for `1:2.1.9~ds1-5`).
fn upstream_major(version: &str) -> Option<u32> {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    let digits: String = no_epoch.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `dpkg --compare-versions a gt b`.
fn debian_version_gt(a: &str, b: &str) -> Result<bool> {
    let out = Cmd::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .timeout(QUERY_TIMEOUT)
        .output()
        .context("comparing Debian versions with dpkg")?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madison_output_is_parsed() {
        let text = " containerd | 2.1.9~ds1-5 | http://deb.debian.org/debian sid/main amd64 Packages\n\
                    containerd | 2.1.9~ds1-5 | http://deb.debian.org/debian sid/main Sources\n\
                    other | 9 | x\n";
        assert_eq!(madison_versions(text), ["2.1.9~ds1-5"]);
        assert_eq!(upstream_major("2.1.9~ds1-5"), Some(2));
        assert_eq!(upstream_major("1:2.0.0-1"), Some(2));
        assert_eq!(upstream_major("1.6.20~ds1-1+deb12u3"), Some(1));
        assert_eq!(dir_name("1:2.1.9+ds1-5"), "1_2.1.9+ds1-5");
    }

    #[test]
    fn dpkg_orders_versions() {
        // husk's machines are Debian: without dpkg, `deps` itself cannot work.
        assert!(debian_version_gt("2.1.9~ds1-5", "2.0.2~ds1-1").unwrap());
        assert!(!debian_version_gt("2.1.9~ds1-5", "2.1.9-1").unwrap());
    }
}
