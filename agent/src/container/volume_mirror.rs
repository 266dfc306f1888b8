//! Guest copies of kubelet's atomically updated volumes (configMap, secret, downwardAPI,
//! projected), so an inotify watcher in a container sees their updates.
//!
//! On the host kubelet replaces such a volume's content by writing a new hidden
//! directory and renaming a `..data` symlink over the old one. Through virtio-fs the guest
//! sees the new content, but its inotify watchers see nothing: FUSE reports only what
//! the guest itself changes. So the agent keeps a copy on a guest tmpfs, bind-mounts that
//! into the container instead, and when the shim (which watches the host directory)
//! sends `SyncVolume` it replays the update the way kubelet made it: new directories
//! first, then the one atomic rename of `..data`, then the key links, then removals.
//!
//! The copy is bounded (bytes, entries, depth: [`Limits`]); a volume beyond the bounds
//! is shared directly, without inotify, and the agent says so in its log.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use thiserror::Error;

pub use husk_protocol::{ATOMIC_DATA_LINK as DATA_LINK, is_atomic_volume};
/// Where a container's copies live, below its bundle directory.
const MIRRORS_DIR: &str = "volumes";
/// How long a sync waits for the guest's view to show the `..data` the host has (the
/// virtio-fs entry cache may hold the old one for up to a second).
const FRESH_VIEW_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum MirrorError {
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the volume at {0:?} is larger than a guest copy may be ({1}); it is shared directly")]
    TooLarge(PathBuf, &'static str),
    #[error("mounting the copy's tmpfs on {path:?}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0:?} is not a volume source of this container")]
    UnknownSource(PathBuf),
}

/// Bounds of one copy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
    pub max_depth: usize,
}

impl Limits {
    /// kubelet caps a configMap or secret at 1 MiB; projected volumes combine several.
    pub const GUEST: Limits = Limits {
        max_bytes: 16 << 20,
        max_entries: 4096,
        max_depth: 16,
    };
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MirrorError + 'a {
    move |source| MirrorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the copy of `source` lives: `<bundle>/volumes/<source's name>`. The name is the
/// share's `<index>-<name>`, unique within the container.
pub fn mirror_path(bundle: &Path, source: &Path) -> Option<PathBuf> {
    let name = source.file_name()?;
    Some(bundle.join(MIRRORS_DIR).join(name))
}

/// Makes the copy of `source` at `mirror` on a tmpfs of its own (bounded like the copy).
pub fn create(source: &Path, mirror: &Path, limits: Limits) -> Result<(), MirrorError> {
    fs::create_dir_all(mirror).map_err(io_err("creating", mirror))?;
    let options = format!(
        "size={},nr_inodes={},mode=0755",
        limits.max_bytes + (1 << 20),
        limits.max_entries + 64
    );
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("tmpfs"),
        mirror,
        Some("tmpfs"),
        flags,
        Some(options.as_str()),
    )
    .map_err(|source| MirrorError::Mount {
        path: mirror.to_path_buf(),
        source,
    })?;
    let synced = sync(source, mirror, limits, None);
    if synced.is_err() {
        let _ = umount2(mirror, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(mirror);
    }
    synced
}

/// Unmounts and removes every copy below `bundle`.
pub fn remove_all(bundle: &Path) {
    let dir = bundle.join(MIRRORS_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        let _ = fs::remove_dir(&path);
    }
}

/// Brings `mirror` up to date with `source`. `data_target`: the `..data` target the host
/// has, if the caller knows it; the sync waits (bounded) until the guest's view agrees.
pub fn sync(
    source: &Path,
    mirror: &Path,
    limits: Limits,
    data_target: Option<&Path>,
) -> Result<(), MirrorError> {
    if let Some(wanted) = data_target {
        wait_for_data_link(source, wanted);
    }
    let mut budget = Budget::new(limits, source);
    let wanted = top_level(source, &mut budget)?;
    let present = top_level(mirror, &mut Budget::new(Limits::GUEST, mirror))?;
    // 1. New directories and files, which nothing points at yet.
    for (name, kind) in &wanted {
        if name == DATA_LINK || present.get(name) == Some(kind) {
            continue;
        }
        match kind {
            Kind::Dir => {
                // Payload directories never change once written; a stale one of the same
                // name is replaced whole.
                let target = mirror.join(name);
                if present.contains_key(name) {
                    remove_entry(&target)?;
                }
                copy_tree(&source.join(name), &target, &mut budget, 1)?;
            }
            Kind::File { .. } => replace_file(&source.join(name), &mirror.join(name), &mut budget)?,
            Kind::Link(_) | Kind::Other => {}
        }
    }
    // 2. The atomic step; 3. the key links through it.
    if let Some(kind @ Kind::Link(_)) = wanted.get(DATA_LINK) {
        if present.get(DATA_LINK) != Some(kind) {
            replace_link(kind, &mirror.join(DATA_LINK))?;
        }
    }
    for (name, kind) in &wanted {
        if name != DATA_LINK && matches!(kind, Kind::Link(_)) && present.get(name) != Some(kind) {
            replace_link(kind, &mirror.join(name))?;
        }
    }
    // 4. What the host no longer has.
    for name in present.keys().filter(|n| !wanted.contains_key(*n)) {
        remove_entry(&mirror.join(name))?;
    }
    Ok(())
}

fn wait_for_data_link(source: &Path, wanted: &Path) {
    let start = Instant::now();
    let link = source.join(DATA_LINK);
    while fs::read_link(&link).ok().as_deref() != Some(wanted) && start.elapsed() < FRESH_VIEW_WAIT
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { len: u64, mtime: i64, mode: u32 },
    Link(PathBuf),
    Other,
}

struct Budget {
    limits: Limits,
    bytes: u64,
    entries: usize,
    root: PathBuf,
}

impl Budget {
    fn new(limits: Limits, root: &Path) -> Self {
        Self {
            limits,
            bytes: 0,
            entries: 0,
            root: root.to_path_buf(),
        }
    }

    fn take(&mut self, bytes: u64) -> Result<(), MirrorError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.entries > self.limits.max_entries {
            return Err(MirrorError::TooLarge(self.root.clone(), "too many entries"));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(MirrorError::TooLarge(self.root.clone(), "too many bytes"));
        }
        Ok(())
    }
}

fn kind_of(path: &Path) -> Result<(Kind, fs::Metadata), MirrorError> {
    let m = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
    let t = m.file_type();
    let kind = if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File {
            len: m.len(),
            mtime: m.mtime(),
            mode: m.mode(),
        }
    } else if t.is_symlink() {
        Kind::Link(fs::read_link(path).map_err(io_err("reading the link", path))?)
    } else {
        Kind::Other
    };
    Ok((kind, m))
}

fn top_level(dir: &Path, budget: &mut Budget) -> Result<HashMap<String, Kind>, MirrorError> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        budget.take(0)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (kind, _) = kind_of(&entry.path())?;
        out.insert(name, kind);
    }
    Ok(out)
}

/// Opens `path` without following a symlink in its last component: a tree that changes
/// while it is copied cannot make the agent read what the link points at.
fn open_nofollow(path: &Path, directory: bool) -> Result<(fs::File, fs::Metadata), MirrorError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    Ok((file, meta))
}

fn copy_tree(from: &Path, to: &Path, budget: &mut Budget, depth: usize) -> Result<(), MirrorError> {
    if depth > budget.limits.max_depth {
        return Err(MirrorError::TooLarge(
            budget.root.clone(),
            "nested too deep",
        ));
    }
    let (dir, meta) = open_nofollow(from, true)?;
    // Listed through the open directory, not its path again.
    let opened = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    fs::create_dir(to).map_err(io_err("creating", to))?;
    for entry in fs::read_dir(&opened).map_err(io_err("listing", from))? {
        let entry = entry.map_err(io_err("listing", from))?;
        let (src, dst) = (opened.join(entry.file_name()), to.join(entry.file_name()));
        match kind_of(&src)?.0 {
            Kind::Dir => {
                budget.take(0)?;
                copy_tree(&src, &dst, budget, depth + 1)?;
            }
            Kind::File { .. } => copy_file(&src, &dst, budget)?,
            link @ Kind::Link(_) => {
                budget.take(0)?;
                make_link(&link, &dst)?;
            }
            Kind::Other => {}
        }
    }
    drop(dir);
    keep_owner_and_mode(to, &meta)
}

fn copy_file(from: &Path, to: &Path, budget: &mut Budget) -> Result<(), MirrorError> {
    let (file, meta) = open_nofollow(from, false)?;
    if !meta.is_file() {
        return Ok(());
    }
    budget.take(meta.len())?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err("creating", to))?;
    // At most what was measured, plus one byte to notice a file that grew meanwhile.
    let copied = io::copy(&mut io::Read::take(file, meta.len() + 1), &mut out)
        .map_err(io_err("copying", from))?;
    budget.take(copied.saturating_sub(meta.len()))?;
    drop(out);
    keep_owner_and_mode(to, &meta)
}

fn keep_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), MirrorError> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("setting the owner of", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("setting the mode of", path))?;
    // The same times, so a later sync finds the copy unchanged.
    let time = |s, ns| TimeSpec::new(s, ns);
    utimensat(
        None,
        path,
        &time(meta.atime(), meta.atime_nsec()),
        &time(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| MirrorError::Io {
        what: "setting the times of",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn replace_file(from: &Path, to: &Path, budget: &mut Budget) -> Result<(), MirrorError> {
    let tmp = temporary(to);
    let _ = fs::remove_file(&tmp);
    copy_file(from, &tmp, budget)?;
    fs::rename(&tmp, to).map_err(io_err("replacing", to))
}

fn make_link(kind: &Kind, at: &Path) -> Result<(), MirrorError> {
    let Kind::Link(target) = kind else {
        return Ok(());
    };
    symlink(target, at).map_err(io_err("creating the link", at))
}

/// Replaces (or creates) the link at `at` in one rename, as kubelet swaps `..data`.
fn replace_link(kind: &Kind, at: &Path) -> Result<(), MirrorError> {
    let tmp = temporary(at);
    let _ = fs::remove_file(&tmp);
    make_link(kind, &tmp)?;
    fs::rename(&tmp, at).map_err(io_err("replacing", at))
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("_husk_tmp");
    path.with_file_name(name)
}

fn remove_entry(path: &Path) -> Result<(), MirrorError> {
    let m = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
    if m.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("removing", path))
    } else {
        fs::remove_file(path).map_err(io_err("removing", path))
    }
}

/// The share path `source` if it is one of container `id`'s volume sources
/// (`<shared>/<id>/mounts/<name>`): one plain component below the container's mounts.
pub fn check_source(shared: &Path, id: &str, source: &Path) -> Result<(), MirrorError> {
    let base = shared.join(id).join("mounts");
    let rest = source.strip_prefix(&base).ok();
    let single = rest.is_some_and(|r| {
        let mut c = r.components();
        matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
    });
    if single {
        Ok(())
    } else {
        Err(MirrorError::UnknownSource(source.to_path_buf()))
    }
}

#[cfg(test)]
#[path = "volume_mirror_tests.rs"]
mod tests;
