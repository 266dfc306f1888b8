//! Everything a jailed process gives up: inherited fds, resources beyond its needs, root,
//! capabilities, privilege gain through exec, being dumped or traced by its own uid.

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, getppid, setgroups, setresgid, setresuid};

use super::{JailError, sys};
use husk_vmm_config::JailConfig;
use husk_vsock::muxer::MAX_CONNECTIONS;

/// Open files: one per vsock connection at most, plus KVM, vCPU, memory, eventfd, epoll
/// and socket descriptors of the VM itself.
pub const MAX_OPEN_FILES: u64 = MAX_CONNECTIONS as u64 + 256;

/// Closes every descriptor above stderr but the `kept` ones handed over from fd 3 on: the
/// process opens what else it needs itself.
pub(super) fn close_inherited_fds(kept: u32) -> Result<(), JailError> {
    let first = 3u32.saturating_add(kept);
    // SAFETY: close_range takes plain integers and touches no memory; no descriptor from
    // `first` on is in use by this process yet (the config file was read and closed).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(JailError::Sys {
            what: "closing inherited file descriptors".into(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Limits, then the switch to the jail's ids, which drops every capability.
pub(super) fn set_up(jail: &JailConfig, threads: u64) -> Result<(), JailError> {
    let parent = getppid();
    let limits = [
        (Resource::RLIMIT_NOFILE, MAX_OPEN_FILES),
        // Counted per uid; the uid is the pod's own.
        (Resource::RLIMIT_NPROC, threads),
        // A core dump would hold guest memory.
        (Resource::RLIMIT_CORE, 0),
        // No RLIMIT_FSIZE: guest memory is a memfd, sized with ftruncate, which it limits.
        (Resource::RLIMIT_MEMLOCK, 0),
        (Resource::RLIMIT_MSGQUEUE, 0),
    ];
    for (resource, limit) in limits {
        setrlimit(resource, limit, limit).map_err(sys(format!("setrlimit {resource:?}")))?;
    }
    drop_bounding_set()?;
    // The sockets a jailed process creates in /run are for the shim (root) alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let (uid, gid) = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
    setgroups(&[]).map_err(sys("dropping supplementary groups"))?;
    setresgid(gid, gid, gid).map_err(sys(format!("switching to gid {gid}")))?;
    // All three uids non-zero and no SECBIT_KEEP_CAPS: the kernel clears the permitted,
    // effective and ambient capability sets.
    setresuid(uid, uid, uid).map_err(sys(format!("switching to uid {uid}")))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(sys("clearing dumpable"))?;
    // The credential change cleared the parent-death signal the shim set.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(sys("arming the parent-death signal"))?;
    if getppid() != parent {
        return Err(JailError::ParentGone);
    }
    Ok(())
}

/// Empties the capability bounding set, so not even a later exec of a file with
/// capabilities could regain one (seccomp forbids exec as well).
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0.. {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let errno = nix::Error::last();
            // EINVAL: past the last capability this kernel knows.
            if errno == nix::Error::EINVAL && cap > 0 {
                return Ok(());
            }
            return Err(JailError::Sys {
                what: format!("dropping capability {cap} from the bounding set"),
                source: errno,
            });
        }
    }
    Ok(())
}
