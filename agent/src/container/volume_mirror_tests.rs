use super::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// kubelet's atomic writer, as in the integration tests' harness.
fn write_generation(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let name = format!("..gen_{generation}");
    fs::create_dir(dir.join(&name)).unwrap();
    for (k, v) in files {
        fs::write(dir.join(&name).join(k), v).unwrap();
    }
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    symlink(&name, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join(DATA_LINK)).unwrap();
    for (k, _) in files {
        let link = dir.join(k);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(k), &link).unwrap();
        }
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn copies_and_follows_updates() {
    let (src, dst) = (tmp(), tmp());
    write_generation(src.path(), 1, &[("key", "v1"), ("other", "o")]);
    assert!(is_atomic_volume(src.path()));
    sync(src.path(), dst.path(), Limits::GUEST, None).unwrap();
    assert_eq!(fs::read_to_string(dst.path().join("key")).unwrap(), "v1");
    assert_eq!(names(dst.path()), names(src.path()));

    write_generation(
        src.path(),
        2,
        &[("key", "v2"), ("other", "o"), ("new", "n")],
    );
    let target = fs::read_link(src.path().join(DATA_LINK)).unwrap();
    sync(src.path(), dst.path(), Limits::GUEST, Some(&target)).unwrap();
    assert_eq!(fs::read_to_string(dst.path().join("key")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(dst.path().join("new")).unwrap(), "n");
    assert_eq!(names(dst.path()), names(src.path()));
    assert!(
        !dst.path().join("..gen_1").exists(),
        "the old generation stays"
    );
}

#[test]
fn keeps_modes_and_leaves_unchanged_files_alone() {
    let (src, dst) = (tmp(), tmp());
    write_generation(src.path(), 1, &[("key", "v1")]);
    let file = src.path().join("..gen_1/key");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
    fs::write(src.path().join("plain"), "p").unwrap();
    sync(src.path(), dst.path(), Limits::GUEST, None).unwrap();
    let copied = fs::metadata(dst.path().join("..gen_1/key")).unwrap();
    assert_eq!(copied.mode() & 0o777, 0o400);
    let before = fs::metadata(dst.path().join("plain")).unwrap().ino();
    sync(src.path(), dst.path(), Limits::GUEST, None).unwrap();
    let after = fs::metadata(dst.path().join("plain")).unwrap().ino();
    assert_eq!(before, after, "an unchanged file was copied again");
}

#[test]
fn refuses_what_is_too_large() {
    let (src, dst) = (tmp(), tmp());
    write_generation(src.path(), 1, &[("big", &"x".repeat(4096))]);
    let small = Limits {
        max_bytes: 1024,
        ..Limits::GUEST
    };
    assert!(matches!(
        sync(src.path(), dst.path(), small, None),
        Err(MirrorError::TooLarge(..))
    ));
    let few = Limits {
        max_entries: 2,
        ..Limits::GUEST
    };
    assert!(matches!(
        sync(src.path(), dst.path(), few, None),
        Err(MirrorError::TooLarge(..))
    ));
}

#[test]
fn refuses_deep_trees() {
    let (src, dst) = (tmp(), tmp());
    let mut deep = src.path().join("..gen_1");
    for _ in 0..20 {
        deep = deep.join("d");
    }
    fs::create_dir_all(&deep).unwrap();
    symlink("..gen_1", src.path().join(DATA_LINK)).unwrap();
    assert!(matches!(
        sync(src.path(), dst.path(), Limits::GUEST, None),
        Err(MirrorError::TooLarge(..))
    ));
}

#[test]
fn only_a_containers_own_sources_are_accepted() {
    let shared = Path::new("/run/husk/shared");
    assert!(check_source(shared, "c1", Path::new("/run/husk/shared/c1/mounts/2-cfg")).is_ok());
    for bad in [
        "/run/husk/shared/c2/mounts/2-cfg",
        "/run/husk/shared/c1/mounts",
        "/run/husk/shared/c1/mounts/2-cfg/..",
        "/run/husk/shared/c1/mounts/../rootfs",
        "/run/husk/shared/c1/mounts/a/b",
        "/etc",
    ] {
        assert!(check_source(shared, "c1", Path::new(bad)).is_err(), "{bad}");
    }
}

#[test]
fn mirror_paths_follow_the_source_name() {
    assert_eq!(
        mirror_path(
            Path::new("/run/husk/containers/c1"),
            Path::new("/run/husk/shared/c1/mounts/2-cfg")
        ),
        Some(PathBuf::from("/run/husk/containers/c1/volumes/2-cfg"))
    );
}

#[test]
fn links_are_copied_as_links_never_followed() {
    let (src, dst, outside) = (tmp(), tmp(), tmp());
    fs::write(outside.path().join("private"), "not for the container").unwrap();
    write_generation(src.path(), 1, &[("key", "v1")]);
    symlink(
        outside.path().join("private"),
        src.path().join("..gen_1/leak"),
    )
    .unwrap();
    symlink(outside.path(), src.path().join("..gen_1/dir")).unwrap();
    sync(src.path(), dst.path(), Limits::GUEST, None).unwrap();
    for name in ["leak", "dir"] {
        let m = fs::symlink_metadata(dst.path().join("..gen_1").join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name} was followed");
    }
    assert!(open_nofollow(&src.path().join("..gen_1/leak"), false).is_err());
}
