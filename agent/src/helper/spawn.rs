//! Starting a helper process: `posix_spawn` of the agent's own binary in helper mode.

use std::ffi::{CStr, CString, c_char, c_short};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use super::{HELPER_ARG, HELPER_FD, HelperError};

/// The helper's fd 3 is dup'ed from at least this number, so `dup2` onto 3 always clears
/// close-on-exec (a dup2 onto itself would not).
const SPAWN_FD_FLOOR: i32 = 10;

/// Sets the scheduling policy of process `pid` (0: the caller). A spare helper runs under
/// `SCHED_IDLE` until its request comes (glibc's `posix_spawn` accepts no idle policy, so
/// the agent sets it after the spawn), then under `SCHED_OTHER` again.
pub fn set_scheduler(pid: i32, policy: libc::c_int) -> nix::Result<()> {
    // SCHED_IDLE and SCHED_OTHER take no priority; zeroed is the only valid parameter.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on one process with a valid parameter.
    Errno::result(unsafe { libc::sched_setscheduler(pid, policy, &param) }).map(drop)
}

/// posix_spawn file actions, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn` before this value was created.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// posix_spawn attributes, destroyed on drop.
struct SpawnAttr(libc::posix_spawnattr_t);

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn` before this value was created.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(what: &'static str, rc: i32) -> Result<(), HelperError> {
    match rc {
        0 => Ok(()),
        errno => Err(HelperError::Spawn {
            exe: what.to_owned(),
            source: Errno::from_raw(errno),
        }),
    }
}

/// Spawns `exe HELPER_ARG` with stdio on /dev/null and `sock` as fd 3. posix_spawn (vfork +
/// exec in glibc) runs no Rust code in the child, so it is safe from a threaded process.
pub fn spawn(exe: &CStr, sock: BorrowedFd<'_>) -> Result<i32, HelperError> {
    let raw = fcntl(sock.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(SPAWN_FD_FLOOR))
        .map_err(HelperError::Socket)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let high = unsafe { OwnedFd::from_raw_fd(raw) };
    let arg = CString::new(HELPER_ARG).map_err(|_| HelperError::Socket(Errno::EINVAL))?;
    let argv: [*mut c_char; 3] = [
        c"husk-agent".as_ptr().cast_mut(),
        arg.as_ptr().cast_mut(),
        ptr::null_mut(),
    ];
    let env = c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let envp: [*mut c_char; 2] = [env.as_ptr().cast_mut(), ptr::null_mut()];

    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: init writes a valid value into the uninitialised storage we pass.
    check("file actions", unsafe {
        libc::posix_spawn_file_actions_init(actions.as_mut_ptr())
    })?;
    // SAFETY: initialised just above.
    let mut actions = FileActions(unsafe { actions.assume_init() });
    let a = &mut actions.0;
    // SAFETY: `a` is initialised; the path is a NUL-terminated static string.
    check("open /dev/null", unsafe {
        libc::posix_spawn_file_actions_addopen(a, 0, c"/dev/null".as_ptr(), libc::O_RDWR, 0)
    })?;
    for (from, to) in [(0, 1), (0, 2), (high.as_raw_fd(), HELPER_FD)] {
        // SAFETY: `a` is initialised; the fds are plain integers checked by posix_spawn.
        check("dup2", unsafe {
            libc::posix_spawn_file_actions_adddup2(a, from, to)
        })?;
    }

    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: init writes a valid value into the uninitialised storage we pass.
    check("attributes", unsafe {
        libc::posix_spawnattr_init(attr.as_mut_ptr())
    })?;
    // SAFETY: initialised just above.
    let mut attr = SpawnAttr(unsafe { attr.assume_init() });
    let flags = c_short::try_from(libc::POSIX_SPAWN_SETSIGMASK)
        .map_err(|_| HelperError::Socket(Errno::EINVAL))?;
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; the attr calls read initialised values.
    check("signal mask", unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::posix_spawnattr_setflags(&mut attr.0, flags)
            | libc::posix_spawnattr_setsigmask(&mut attr.0, empty.as_ptr())
    })?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: NUL-terminated strings, NULL-terminated
    // argv/envp arrays that outlive the call, and initialised actions/attributes.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(HelperError::Spawn {
            exe: exe.to_string_lossy().into_owned(),
            source: Errno::from_raw(rc),
        });
    }
    Ok(pid)
}
