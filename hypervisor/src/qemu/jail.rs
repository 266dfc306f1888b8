//! QEMU's jail: husk-vmm sets it up and then executes QEMU in it (`husk-vmm --exec`), so
//! QEMU gets the same confinement as husk's own monitor ([`crate::jail`]) without a
//! `-runas`/`-chroot` of its own (QEMU 7.2's `-sandbox elevateprivileges=deny` forbids the
//! set*id calls `-runas` makes, and a credential change would clear the parent-death signal).
//!
//! The root holds the system's program directories read-only (QEMU, its libraries, modules
//! and firmware live there), the dynamic linker's cache, a few device nodes owned by QEMU's
//! uid, the kernel and initramfs under `/boot`, and QEMU's socket directory as `/run`. No
//! `/proc`, `/sys`, `/etc` (but the linker cache), `/home`, `/root`, `/var` or `/tmp`.

use std::path::{Path, PathBuf};

use husk_vmm_config::jail::{INITRD_PATH, KERNEL_PATH};
use husk_vmm_config::{Bind, Contents, Link};

/// Where the system's programs and libraries are; each is bound read-only if it is a
/// directory, recreated if it is a link (a merged-`/usr` system's `/lib -> usr/lib`).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];
/// The dynamic linker finds libraries in multiarch directories through its cache.
const LINKER_CACHE: &str = "/etc/ld.so.cache";
/// Devices every QEMU gets: input for an unused stdin, random seeds.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];
const KVM_DEVICE: &str = "/dev/kvm";
/// QEMU's threads beyond the vCPUs: main loop, RCU, and its worker pool, with room.
const EXTRA_THREADS: u64 = 24;

/// What QEMU's jail holds for a VM with `vcpus` booting `kernel` and `initrd`.
pub(super) fn contents(
    binary: &Path,
    kernel: &Path,
    initrd: &Path,
    vcpus: u32,
    kvm: bool,
) -> Contents {
    let (mut programs, links) = system_dirs(SYSTEM_DIRS);
    if !programs.iter().any(|p| binary.starts_with(&p.inside)) {
        if let Some(dir) = binary.parent() {
            programs.push(Bind {
                host: dir.to_path_buf(),
                inside: dir.to_path_buf(),
            });
        }
    }
    let mut files = vec![
        Bind {
            host: kernel.to_path_buf(),
            inside: KERNEL_PATH.into(),
        },
        Bind {
            host: initrd.to_path_buf(),
            inside: INITRD_PATH.into(),
        },
    ];
    if Path::new(LINKER_CACHE).is_file() {
        files.push(Bind {
            host: LINKER_CACHE.into(),
            inside: LINKER_CACHE.into(),
        });
    }
    let mut devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    if kvm {
        devices.push(KVM_DEVICE.into());
    }
    Contents {
        devices,
        files,
        programs,
        links,
        threads: u64::from(vcpus) + EXTRA_THREADS,
        host_network: false,
        inherited_fds: 0,
    }
}

/// The directories of `candidates` bound as they are, the links recreated.
fn system_dirs(candidates: &[&str]) -> (Vec<Bind>, Vec<Link>) {
    let mut binds = Vec::new();
    let mut links = Vec::new();
    for &dir in candidates {
        let path = Path::new(dir);
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(path) {
                links.push(Link {
                    inside: path.to_path_buf(),
                    target,
                });
            }
        } else if meta.is_dir() {
            binds.push(Bind {
                host: path.to_path_buf(),
                inside: path.to_path_buf(),
            });
        }
    }
    (binds, links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_kept_and_directories_bound() {
        let dir = tempfile::tempdir().unwrap();
        let usr = dir.path().join("usr");
        std::fs::create_dir(&usr).unwrap();
        let lib = dir.path().join("lib");
        std::os::unix::fs::symlink("usr/lib", &lib).unwrap();
        let missing = dir.path().join("lib32");
        let names: Vec<String> = [&usr, &lib, &missing]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (binds, links) = system_dirs(&refs);
        assert_eq!(
            binds,
            [Bind {
                host: usr.clone(),
                inside: usr
            }]
        );
        assert_eq!(
            links,
            [Link {
                inside: lib,
                target: "usr/lib".into()
            }]
        );
    }

    #[test]
    fn a_binary_outside_the_system_dirs_brings_its_directory() {
        let c = contents(
            Path::new("/opt/qemu/bin/qemu-system-x86_64"),
            Path::new("/usr/share/husk/vmlinuz"),
            Path::new("/usr/share/husk/initrd.img"),
            2,
            true,
        );
        assert!(
            c.programs
                .iter()
                .any(|p| p.inside == Path::new("/opt/qemu/bin"))
        );
        assert!(c.devices.contains(&PathBuf::from("/dev/kvm")));
        assert_eq!(c.threads, 2 + EXTRA_THREADS);
        c.validate().unwrap();
        let insides: Vec<_> = c.files.iter().map(|f| f.inside.clone()).collect();
        assert!(insides.contains(&PathBuf::from(KERNEL_PATH)));
        assert!(insides.contains(&PathBuf::from(INITRD_PATH)));
        let tcg = contents(
            Path::new("/usr/bin/qemu-system-x86_64"),
            Path::new("/k"),
            Path::new("/i"),
            1,
            false,
        );
        assert!(!tcg.devices.contains(&PathBuf::from("/dev/kvm")));
        assert!(
            !tcg.programs
                .iter()
                .any(|p| p.inside == Path::new("/usr/bin"))
        );
    }
}
