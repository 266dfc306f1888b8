//! Seccomp for exec'd processes.
//!
//! libcontainer 0.7's tenant builder rebuilds the spec's `linux` section from namespaces and
//! cgroups only, so an exec'd process would run without the container's seccomp filter. The
//! helper therefore hands libcontainer this executor, which installs the container's filter in
//! the new process right before `execve` — where runc installs it for NoNewPrivileges
//! processes too.
//!
//! Installing a filter needs NoNewPrivileges or CAP_SYS_ADMIN. runc installs it before
//! dropping capabilities when NoNewPrivileges is off; libcontainer offers no hook there. So
//! when the plain load is refused, the process gets NoNewPrivileges and the load is retried:
//! an exec'd process without NoNewPrivileges and CAP_SYS_ADMIN cannot gain privileges through
//! setuid binaries — stricter than runc, never weaker.

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::seccomp::{self, SeccompError};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl SeccompExecutor {
    /// An executor applying the seccomp filter of the container whose spec is `container_spec`.
    pub fn for_container(container_spec: &Spec) -> Self {
        let seccomp = container_spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        Self { seccomp }
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(filter) = &self.seccomp {
            install(filter)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if self.seccomp.as_ref().is_some_and(seccomp::is_notify) {
            return Err(ExecutorValidationError::ArgValidationError(
                "seccomp notify (SCMP_ACT_NOTIFY) is not supported for exec'd processes".into(),
            ));
        }
        DefaultExecutor {}.validate(spec)
    }
}

fn install(filter: &LinuxSeccomp) -> Result<(), ExecutorError> {
    let failed = |e: SeccompError| ExecutorError::Other(format!("installing seccomp: {e}"));
    match seccomp::initialize_seccomp(filter) {
        Ok(_) => Ok(()),
        Err(SeccompError::LoadContext { .. }) => {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory.
            let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(ExecutorError::Other(format!(
                    "setting no_new_privs for seccomp: {}",
                    std::io::Error::last_os_error()
                )));
            }
            seccomp::initialize_seccomp(filter)
                .map(|_| ())
                .map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}
