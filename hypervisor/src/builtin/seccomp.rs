//! The monitor's syscall allowlist. Once the VM is built (files opened, memory mapped, KVM
//! objects and devices created, vCPU threads started) the monitor only moves bytes between
//! the guest, its sockets and KVM, so every thread is restricted to that: anything else kills
//! the process (`SIGSYS`). A guest that takes over a device emulation cannot open files, exec,
//! fork, or talk to the network. `ioctl` is limited to the few requests used at run time
//! and `socket` to Unix sockets (guest-initiated vsock connections to `<uds>_<port>`).
//!
//! The list comes from tracing husk-vmm through boot, container IO and shutdown
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
    #[error("building the syscall filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error(
        "installing the syscall filter (does the host kernel have CONFIG_SECCOMP_FILTER?): {0}"
    )]
    Install(#[from] seccompiler::Error),
}

/// Syscalls allowed with any arguments.
const ALLOWED: &[i64] = &[
    // IO on the console, sockets, eventfds, timerfds.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
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
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_unlink,
    // Memory (the allocator) and threads' own bookkeeping.
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

/// `ioctl` requests used after set-up: running vCPUs, the crash dump, legacy IRQ lines,
/// non-blocking sockets.
fn ioctl_requests() -> [u64; 7] {
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_TRANSLATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_IRQ_LINE(),
        libc::FIONBIO,
    ]
    .map(u64::from)
}

fn arg_equals(index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])?)
}

/// The filter as a BPF program: allowed syscalls pass, anything else kills the process.
pub fn program() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_ioctl,
        ioctl_requests()
            .into_iter()
            .map(|req| arg_equals(1, req))
            .collect::<Result<_, _>>()?,
    );
    let af_unix = u64::try_from(libc::AF_UNIX).unwrap_or_default();
    rules.insert(libc::SYS_socket, vec![arg_equals(0, af_unix)?]);
    // A vCPU thread started just before the filter names itself once it runs.
    let set_name = u64::try_from(libc::PR_SET_NAME).unwrap_or_default();
    rules.insert(libc::SYS_prctl, vec![arg_equals(0, set_name)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(BpfProgram::try_from(filter)?)
}

/// Restricts every thread of this process to the allowlist.
pub fn install() -> Result<usize, SeccompError> {
    let program = program()?;
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(ALLOWED.len() + 3)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use super::*;

    /// Set in the re-executed test binary that installs the filter.
    const CHILD_ENV: &str = "HUSK_SECCOMP_PROBE";

    #[test]
    fn program_builds() {
        let p = program().unwrap();
        assert!(p.len() > ALLOWED.len());
    }

    /// The child's side (the filter cannot be removed again, so it runs in a re-executed
    /// copy of this test): the allowed calls work, then `what` must kill the process.
    fn child_probe(what: &str) {
        install().unwrap();
        let socket = std::os::unix::net::UnixDatagram::unbound();
        assert!(socket.is_ok(), "AF_UNIX sockets are allowed");
        println!("filter installed");
        match what {
            "open" => {
                let _ = std::fs::File::open("/etc/hostname");
            }
            "inet" => {
                let _ = std::net::UdpSocket::bind("127.0.0.1:0");
            }
            _ => {}
        }
        println!("still alive");
    }

    fn probe(what: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "builtin::seccomp::tests::forbidden_calls_kill_the_process_allowed_ones_do_not",
                "--nocapture",
            ])
            .env(CHILD_ENV, what)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn forbidden_calls_kill_the_process_allowed_ones_do_not() {
        if let Ok(what) = std::env::var(CHILD_ENV) {
            return child_probe(&what);
        }
        let (status, out) = probe("nothing");
        assert!(status.success(), "{status:?}: {out}");
        assert!(out.contains("still alive"), "{out}");
        for what in ["open", "inet"] {
            let (status, out) = probe(what);
            assert_eq!(
                status.signal(),
                Some(libc::SIGSYS),
                "{what}: {status:?}: {out}"
            );
            assert!(out.contains("filter installed"), "{what}: {out}");
            assert!(!out.contains("still alive"), "{what}: {out}");
        }
    }
}
