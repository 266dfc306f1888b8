//! Walks below the pod directory against planted symlinks, files and mounts.

use std::os::unix::fs::symlink;

use super::*;

fn setup() -> (tempfile::TempDir, Beneath, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let canary = d.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), "keep").unwrap();
    let b = Beneath::open(&root).unwrap();
    (d, b, canary)
}

fn canary_intact(canary: &Path) {
    let names: Vec<_> = std::fs::read_dir(canary)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"], "the canary directory changed");
    assert_eq!(
        std::fs::read_to_string(canary.join("keep")).unwrap(),
        "keep"
    );
}

#[test]
fn creates_directory_and_file_mount_points() {
    let (_d, b, _) = setup();
    let t = b
        .mount_point(Path::new("c1/rootfs"), MountPoint::Directory)
        .unwrap();
    assert_eq!(
        std::fs::read_link(t.path()).unwrap(),
        b.path().join("c1/rootfs")
    );
    assert_eq!(
        std::fs::canonicalize(t.top()).unwrap(),
        b.path().join("c1/rootfs")
    );
    let t = b
        .mount_point(Path::new("c1/mounts/0-hosts"), MountPoint::File)
        .unwrap();
    assert!(b.path().join("c1/mounts/0-hosts").is_file());
    assert_eq!(
        std::fs::read_link(t.path()).unwrap(),
        b.path().join("c1/mounts/0-hosts")
    );
    // A mount point at the top level has the root as its parent.
    let t = b
        .mount_point(Path::new("top"), MountPoint::Directory)
        .unwrap();
    assert_eq!(
        std::fs::canonicalize(t.top()).unwrap(),
        b.path().join("top")
    );
    // Again: existing mount points are reused.
    b.mount_point(Path::new("c1/rootfs"), MountPoint::Directory)
        .unwrap();
    b.mount_point(Path::new("c1/mounts/0-hosts"), MountPoint::File)
        .unwrap();
}

#[test]
fn symlinks_anywhere_on_the_path_are_refused() {
    let (_d, b, canary) = setup();
    symlink(&canary, b.path().join("c2")).unwrap();
    let err = b
        .mount_point(Path::new("c2/rootfs"), MountPoint::Directory)
        .unwrap_err();
    assert!(matches!(err, BeneathError::Resolve { .. }), "{err}");
    std::fs::create_dir_all(b.path().join("c3/mounts")).unwrap();
    symlink(canary.join("keep"), b.path().join("c3/mounts/0-hosts")).unwrap();
    let err = b
        .mount_point(Path::new("c3/mounts/0-hosts"), MountPoint::File)
        .unwrap_err();
    assert!(matches!(err, BeneathError::Resolve { .. }), "{err}");
    symlink(&canary, b.path().join("c3/rootfs")).unwrap();
    let err = b
        .mount_point(Path::new("c3/rootfs"), MountPoint::Directory)
        .unwrap_err();
    assert!(matches!(err, BeneathError::Resolve { .. }), "{err}");
    // A dangling symlink to a path that does not exist yet is not created either.
    symlink(canary.join("new"), b.path().join("c4")).unwrap();
    assert!(b.mount_point(Path::new("c4"), MountPoint::File).is_err());
    canary_intact(&canary);
}

#[test]
fn the_wrong_kind_of_entry_is_refused() {
    let (_d, b, _) = setup();
    std::fs::write(b.path().join("c1"), "").unwrap();
    assert!(
        b.mount_point(Path::new("c1/rootfs"), MountPoint::Directory)
            .is_err()
    );
    std::fs::create_dir(b.path().join("f")).unwrap();
    assert!(b.mount_point(Path::new("f"), MountPoint::File).is_err());
    // A fifo as a file mount point is refused without blocking on it.
    nix::unistd::mkfifo(&b.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
    assert!(b.mount_point(Path::new("p"), MountPoint::File).is_err());
}

#[test]
fn paths_that_are_not_plain_and_relative_are_refused() {
    let (_d, b, _) = setup();
    for p in ["", "/etc", "../x", "a/../../x", "./a"] {
        let err = b
            .mount_point(Path::new(p), MountPoint::Directory)
            .unwrap_err();
        assert!(
            matches!(err, BeneathError::NotRelative { .. }),
            "{p:?}: {err}"
        );
        assert!(b.remove_tree(Path::new(p)).is_err(), "{p:?}");
    }
    let deep = (0..=MAX_DEPTH).map(|_| "d").collect::<Vec<_>>().join("/");
    assert!(matches!(
        b.mount_point(Path::new(&deep), MountPoint::Directory),
        Err(BeneathError::TooDeep { .. })
    ));
}

#[test]
fn remove_tree_removes_without_following_symlinks() {
    let (_d, b, canary) = setup();
    std::fs::create_dir_all(b.path().join("c1/mounts/0-data")).unwrap();
    std::fs::create_dir_all(b.path().join("c1/rootfs")).unwrap();
    std::fs::write(b.path().join("c1/mounts/1-hosts"), "x").unwrap();
    symlink(&canary, b.path().join("c1/mounts/2-link")).unwrap();
    symlink(&canary, b.path().join("c1/rootfs/etc")).unwrap();
    b.remove_tree(Path::new("c1")).unwrap();
    assert!(!b.path().join("c1").exists());
    canary_intact(&canary);
    // Missing is fine; a symlink at the top is removed, not followed.
    b.remove_tree(Path::new("c1")).unwrap();
    symlink(&canary, b.path().join("c2")).unwrap();
    b.remove_tree(Path::new("c2")).unwrap();
    assert!(b.path().join("c2").symlink_metadata().is_err());
    canary_intact(&canary);
}

/// A mount left in place stops the removal: its contents are never emptied. Runs in a
/// thread of its own mount namespace, so nothing stays mounted if it fails.
#[test]
fn remove_tree_does_not_enter_a_mount() {
    let (_d, b, canary) = setup();
    let root = b.path().to_path_buf();
    let result = std::thread::spawn(move || -> Result<(), String> {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| e.to_string())?;
        let target = root.join("c1/rootfs");
        std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        mount(
            Some(&canary),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| e.to_string())?;
        let b = Beneath::open(&root).map_err(|e| e.to_string())?;
        match b.remove_tree(Path::new("c1")) {
            Err(BeneathError::Resolve { .. }) | Err(BeneathError::Io { .. }) => {}
            other => return Err(format!("removal through a mount: {other:?}")),
        }
        canary_intact(&canary);
        Ok(())
    })
    .join()
    .unwrap();
    // Needs root (as the shim and CI have).
    result.unwrap();
}
