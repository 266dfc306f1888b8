//! The monitor's syscall allowlists, one per thread kind, installed by each thread on
//! itself once the VM is built (files opened, memory mapped, KVM objects, devices and vCPU
//! threads created) and before any vCPU enters the guest. From then on the monitor only moves
//! bytes between the guest, its sockets and KVM; anything else kills the process (`SIGSYS`).
//! Together with the jail (an empty, read-only root; see [`super::jail`]) a guest that takes
//! over a device emulation cannot open, create or remove files, exec, fork, trace, or reach
//! a socket outside the pod's socket directory.
//!
//! Why each call is there:
//! - both kinds: `read`/`write` and vectors (eventfds, the console pipe, sockets), `close`,
//!   `fcntl` (`EventFd::try_clone` duplicates), the allocator (`mmap`, `munmap`, `mremap`,
//!   `mprotect`, `madvise`, `brk`), locks and thread bookkeeping (`futex`, `sched_yield`,
//!   `rseq`, `set_robust_list`, `sigaltstack`, `rt_sig*`, `gettid`, `getpid`), time
//!   (`clock_gettime`, sleeps), `getrandom` (hash maps), `exit`/`exit_group`.
//! - vCPU threads: `ioctl` `KVM_RUN`, and the register/translation reads of a crash dump;
//!   `KVM_IRQ_LINE` for the legacy devices; `sendmsg`/`recvmsg` and `eventfd2` for the
//!   vhost-user messages a virtio-fs activation sends when the guest sets `DRIVER_OK`.
//! - the device (main) thread: the event loop (`epoll_*`, `poll`, `timerfd_*`, `eventfd2`);
//!   the hybrid-vsock host side: `accept4` on the pod's vsock socket, `socket(AF_UNIX,
//!   SOCK_STREAM)` and `connect` for guest-initiated connections to `<uds>_<port>` (the jail
//!   leaves only the pod's socket directory to connect to), `sendmsg`/`recvmsg`/`sendto`/
//!   `recvfrom`, `shutdown`, `get`/`setsockopt`; `ioctl` `FIONBIO` and `KVM_IRQ_LINE`.
//!
//! - the vsock backend QEMU uses (`husk-vmm --vsock-backend`, one filter for all its
//!   threads): the device thread's calls without KVM, plus `clone` for threads only
//!   (`CLONE_THREAD`; the vhost-user library starts its workers when QEMU connects) and
//!   `prctl(PR_SET_NAME)` for their names. `clone3`, whose flags a filter cannot see, fails
//!   with `ENOSYS` and the C library falls back to `clone`.
//!
//! Not there, on purpose: `open*`, `unlink*`, `mkdir`, `rename`, `execve*`, `clone*`/`fork`,
//! `ptrace`, `mount`, `bind`, `listen`, `kill`, `setuid` and friends, `prctl`. The monitor
//! never removes its sockets (the shim does), and exits without dropping its devices.
//!
//! The lists come from tracing husk-vmm through boot, container IO and shutdown
//! (`strace -f`), minus the set-up-only calls.

use std::collections::BTreeMap;

use kvm_bindings::{KVMIO, kvm_irq_level, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} syscall filter: {1}")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    #[error(
        "installing the {0:?} syscall filter (does the host kernel have CONFIG_SECCOMP_FILTER?): {1}"
    )]
    Install(ThreadKind, #[source] seccompiler::Error),
}

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU (`KVM_RUN`) and the MMIO/PIO exits it takes.
    Vcpu,
    /// The main thread: the event loop serving every device's host side.
    Device,
    /// Every thread of the vhost-user vsock backend process that serves QEMU.
    VsockBackend,
}

/// Allowed with any arguments, to every thread.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// vCPU threads, beyond [`COMMON`] (vhost-user messages on activation).
const VCPU: &[i64] = &[libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_eventfd2];

/// The device thread, beyond [`COMMON`].
const DEVICE: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

impl ThreadKind {
    fn syscalls(self) -> impl Iterator<Item = i64> {
        let own = match self {
            Self::Vcpu => VCPU,
            Self::Device | Self::VsockBackend => DEVICE,
        };
        let backend: &[i64] = match self {
            Self::VsockBackend => &[libc::SYS_clone3],
            _ => &[],
        };
        COMMON.iter().chain(own).chain(backend).copied()
    }

    /// Calls allowed only with the arguments [`conditional_rules`] checks.
    fn conditional(self) -> &'static [i64] {
        match self {
            Self::Vcpu => &[libc::SYS_ioctl],
            Self::Device => &[libc::SYS_ioctl, libc::SYS_socket],
            Self::VsockBackend => &[
                libc::SYS_ioctl,
                libc::SYS_socket,
                libc::SYS_clone,
                libc::SYS_prctl,
            ],
        }
    }

    /// `ioctl` requests this kind makes after set-up.
    fn ioctl_requests(self) -> Vec<u64> {
        match self {
            Self::Vcpu => vec![
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_TRANSLATE(),
                KVM_GET_VCPU_EVENTS(),
                KVM_IRQ_LINE(),
            ],
            Self::Device => vec![KVM_IRQ_LINE(), libc::FIONBIO],
            Self::VsockBackend => vec![libc::FIONBIO],
        }
    }
}

fn arg_equals(index: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// `socket(AF_UNIX, SOCK_STREAM | flags, 0)`: a guest-initiated vsock connection.
fn unix_stream_socket() -> Result<SeccompRule, seccompiler::BackendError> {
    let unix = u64::try_from(libc::AF_UNIX).unwrap_or_default();
    let stream = u64::try_from(libc::SOCK_STREAM).unwrap_or_default();
    SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, unix)?,
        // The type argument carries SOCK_NONBLOCK / SOCK_CLOEXEC too.
        SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xf),
            stream,
        )?,
    ])
}

/// `clone` that creates a thread (the flags are its first argument on x86_64), never a
/// process.
fn thread_clone() -> Result<SeccompRule, seccompiler::BackendError> {
    let thread = u64::try_from(libc::CLONE_THREAD).unwrap_or_default();
    SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )?])
}

fn conditional_rules(
    kind: ThreadKind,
    nr: i64,
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    match nr {
        libc::SYS_ioctl => kind
            .ioctl_requests()
            .into_iter()
            .map(|req| arg_equals(1, req))
            .collect(),
        libc::SYS_socket => Ok(vec![unix_stream_socket()?]),
        libc::SYS_clone => Ok(vec![thread_clone()?]),
        libc::SYS_prctl => Ok(vec![arg_equals(
            0,
            u64::try_from(libc::PR_SET_NAME).unwrap_or_default(),
        )?]),
        _ => Ok(Vec::new()),
    }
}

fn build(kind: ThreadKind) -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        kind.syscalls().map(|nr| (nr, Vec::new())).collect();
    for &nr in kind.conditional() {
        rules.insert(nr, conditional_rules(kind, nr)?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(filter)
}

/// The filter for `kind` as a BPF program: allowed calls pass, anything else kills the
/// process.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    build(kind).map_err(|e| SeccompError::Build(kind, e))
}

/// Restricts the calling thread (and threads it starts later) to the `kind` allowlist;
/// returns how many syscalls it allows.
pub fn install(kind: ThreadKind) -> Result<usize, SeccompError> {
    let program = program(kind)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind, e))?;
    Ok(kind.syscalls().count() + kind.conditional().len())
}

/// `clone3` fails with `ENOSYS` (its flags live in memory a filter cannot read), so thread
/// creation takes `clone`, whose flags the allowlist checks.
fn clone3_unavailable() -> Result<BpfProgram, seccompiler::BackendError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or_default()),
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(filter)
}

/// Restricts every thread of the process, running or started later, to the `kind`
/// allowlist (for a process whose threads are not all its own: the vsock backend's).
pub fn install_all_threads(kind: ThreadKind) -> Result<usize, SeccompError> {
    let clone3 = clone3_unavailable().map_err(|e| SeccompError::Build(kind, e))?;
    seccompiler::apply_filter_all_threads(&clone3).map_err(|e| SeccompError::Install(kind, e))?;
    let program = program(kind)?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| SeccompError::Install(kind, e))?;
    Ok(kind.syscalls().count() + kind.conditional().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_programs_build_and_differ_where_they_should() {
        let vcpu: Vec<i64> = ThreadKind::Vcpu.syscalls().collect();
        let device: Vec<i64> = ThreadKind::Device.syscalls().collect();
        assert!(program(ThreadKind::Vcpu).unwrap().len() > vcpu.len());
        assert!(program(ThreadKind::Device).unwrap().len() > device.len());
        for nr in [libc::SYS_connect, libc::SYS_accept4, libc::SYS_epoll_wait] {
            assert!(device.contains(&nr) && !vcpu.contains(&nr), "{nr}");
        }
        let run = KVM_RUN();
        assert!(ThreadKind::Vcpu.ioctl_requests().contains(&run));
        assert!(!ThreadKind::Device.ioctl_requests().contains(&run));
        for nr in [
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_clone,
            libc::SYS_clone3,
        ] {
            assert!(!device.contains(&nr) && !vcpu.contains(&nr), "{nr}");
        }
    }
}
