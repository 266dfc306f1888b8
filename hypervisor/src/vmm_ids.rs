//! A uid/gid of its own for each pod's monitor, from a range reserved for husk. Each pod
//! holds its id by an exclusive `flock` on `<lock_dir>/<id>` for as long as its VM lives:
//! the lock dies with the shim that holds it, so a crashed shim never leaks an id, and two
//! pods never share one (so per-uid limits such as `RLIMIT_NPROC` are per pod, and one
//! pod's monitor cannot signal or trace another's).

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The ids husk may give monitors and where the claims are kept (shared by every shim on
/// the host, so not in a shim's private state directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
    pub lock_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error(
        "the monitor id range {first}..{end} is invalid: it must not contain 0 and must end below 4294967295",
        end = u64::from(*first) + u64::from(*count)
    )]
    BadRange { first: u32, count: u32 },
    #[error("creating the id lock directory {path:?}: {source}")]
    LockDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("claiming monitor id {id} ({path:?}): {source}")]
    Lock {
        id: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "all {count} monitor ids from {first} are in use by running pods; raise hypervisor.jail.id_count"
    )]
    Exhausted { first: u32, count: u32 },
}

/// An id held for one pod; released (its lock file removed) on drop.
#[derive(Debug)]
pub struct IdClaim {
    id: u32,
    path: PathBuf,
    /// Holds the lock; closed after the file is removed.
    _lock: Flock<File>,
}

impl IdClaim {
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for IdClaim {
    fn drop(&mut self) {
        // Removed while still locked: a claimant that opened this file meanwhile sees the
        // path gone (or replaced) after its own lock and moves on.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl IdRange {
    fn validate(&self) -> Result<(), IdError> {
        let end = u64::from(self.first) + u64::from(self.count);
        if self.first == 0 || self.count == 0 || end > u64::from(u32::MAX) {
            return Err(IdError::BadRange {
                first: self.first,
                count: self.count,
            });
        }
        Ok(())
    }

    /// Claims a free id, starting from one derived from `seed` (the pod's name) so that
    /// pods started together rarely probe the same ids.
    pub fn claim(&self, seed: &str) -> Result<IdClaim, IdError> {
        self.validate()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.lock_dir)
            .map_err(|source| IdError::LockDir {
                path: self.lock_dir.clone(),
                source,
            })?;
        let mut hasher = DefaultHasher::new();
        seed.hash(&mut hasher);
        let start = hasher.finish() % u64::from(self.count);
        for step in 0..u64::from(self.count) {
            let offset = u32::try_from((start + step) % u64::from(self.count)).unwrap_or(0);
            let id = self.first + offset;
            if let Some(claim) = try_claim(&self.lock_dir, id)? {
                return Ok(claim);
            }
        }
        Err(IdError::Exhausted {
            first: self.first,
            count: self.count,
        })
    }
}

/// Removes the claim files no live pod holds (a shim killed before it released its id):
/// for `delete`, after a shim died. Returns how many went.
pub fn sweep_stale(lock_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(lock_dir) else {
        return 0;
    };
    let mut swept = 0;
    for id in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        // Taking the lock proves nobody holds it; dropping the claim removes the file.
        if let Ok(Some(claim)) = try_claim(lock_dir, id) {
            drop(claim);
            swept += 1;
        }
    }
    swept
}

/// `Ok(None)` when another pod holds `id`.
fn try_claim(dir: &Path, id: u32) -> Result<Option<IdClaim>, IdError> {
    let path = dir.join(id.to_string());
    let err = |source| IdError::Lock {
        id,
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, nix::Error::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(err(e.into())),
    };
    // The holder may have released and removed the file between our open and our lock.
    let ours = file.metadata().map_err(err)?.ino();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.ino() == ours => Ok(Some(IdClaim {
            id,
            path,
            _lock: file,
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(dir: &Path, count: u32) -> IdRange {
        IdRange {
            first: 1_000_000,
            count,
            lock_dir: dir.join("ids"),
        }
    }

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(dir.path(), 2);
        let a = r.claim("pod-a").unwrap();
        let b = r.claim("pod-a").unwrap();
        assert_ne!(a.id(), b.id());
        assert!((1_000_000..1_000_002).contains(&a.id()));
        let err = r.claim("pod-c").unwrap_err();
        assert!(err.to_string().contains("id_count"), "{err}");
        let freed = a.id();
        drop(a);
        assert_eq!(r.claim("pod-d").unwrap().id(), freed);
        drop(b);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ids")).unwrap().count(),
            0
        );
    }

    #[test]
    fn stale_claims_are_swept_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(dir.path(), 1);
        let held = r.claim("pod-a").unwrap();
        // What a killed shim leaves: the file, with no lock on it.
        std::fs::write(r.lock_dir.join("1000003"), "").unwrap();
        std::fs::write(r.lock_dir.join("not-an-id"), "").unwrap();
        assert_eq!(sweep_stale(&r.lock_dir), 1);
        assert!(r.lock_dir.join(held.id().to_string()).exists());
        assert!(!r.lock_dir.join("1000003").exists());
        assert!(r.lock_dir.join("not-an-id").exists());
    }

    #[test]
    fn bad_ranges_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = range(dir.path(), 1);
        r.first = 0;
        assert!(matches!(r.claim("x"), Err(IdError::BadRange { .. })));
        r.first = u32::MAX - 1;
        r.count = 2;
        assert!(matches!(r.claim("x"), Err(IdError::BadRange { .. })));
    }
}
