//! The workload executor the helper hands libcontainer, for container inits and execs.
//!
//! **Finding the program.** libcontainer 0.7's default executor refuses any spec without
//! `PATH` in its environment, even for an absolute `args[0]`, so images built FROM scratch
//! by umoci, buildah, ko or apko (which set no `PATH`) would not run. husk resolves
//! `args[0]` as runc does (Go's `exec.LookPath`): a name containing `/` is taken as it is;
//! any other name is searched in the process's own `PATH`, and without one it is not found.
//! The program is then executed at the path found, so what was checked is what runs.
//! Checks run as the container user, after `pivot_root` (libcontainer calls `validate`
//! there), so "executable" means executable *for that user*.
//!
//! **Seccomp for execs.** libcontainer 0.7's tenant builder rebuilds the spec's `linux`
//! section from namespaces and cgroups only, so an exec'd process would run without the
//! container's seccomp filter. The exec executor therefore installs the container's filter
//! right before `execve` — where runc installs it for NoNewPrivileges processes too.
//! Installing a filter needs NoNewPrivileges or CAP_SYS_ADMIN. runc installs it before
//! dropping capabilities when NoNewPrivileges is off; libcontainer offers no hook there. So
//! when the plain load is refused, the process gets NoNewPrivileges and the load is retried:
//! an exec'd process without NoNewPrivileges and CAP_SYS_ADMIN cannot gain privileges through
//! setuid binaries — stricter than runc, never weaker. (A container init's filter is
//! installed by libcontainer itself.)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::seccomp::{self, SeccompError};
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::unistd::{AccessFlags, access};
use thiserror::Error;

/// Why `args[0]` cannot run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("process.args is empty")]
    NoArgs,
    #[error(
        "executable `{name}` not found: the process has no PATH in its environment; \
         give an absolute path or set PATH in the image or container env"
    )]
    NoPath { name: String },
    #[error("executable `{name}` not found in PATH {path}")]
    NotInPath { name: String, path: String },
    #[error("executable {} does not exist in the container", .0.display())]
    Missing(PathBuf),
    #[error("{} is not a regular file the container user may execute", .0.display())]
    NotExecutable(PathBuf),
}

/// Where `name` runs from, given the process environment `env` (`KEY=value` strings).
pub fn resolve(name: &str, env: &[String]) -> Result<PathBuf, LookupError> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return match path.symlink_metadata() {
            Err(_) => Err(LookupError::Missing(path)),
            Ok(_) if is_executable(&path) => Ok(path),
            Ok(_) => Err(LookupError::NotExecutable(path)),
        };
    }
    let Some(search) = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")) else {
        return Err(LookupError::NoPath {
            name: name.to_owned(),
        });
    };
    // Like LookPath: empty entries (the current directory) are skipped, and a candidate
    // that is not executable does not stop the search.
    search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LookupError::NotInPath {
            name: name.to_owned(),
            path: search.to_owned(),
        })
}

/// A regular file (after symlinks) that the calling user may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file()) && access(path, AccessFlags::X_OK).is_ok()
}

fn process_args_env(spec: &Spec) -> Result<(&[String], &[String]), LookupError> {
    let process = spec.process().as_ref().ok_or(LookupError::NoArgs)?;
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Err(LookupError::NoArgs);
    }
    Ok((args, process.env().as_deref().unwrap_or_default()))
}

#[derive(Clone, Default)]
pub struct HuskExecutor {
    /// The container's filter, for exec'd processes only.
    exec_seccomp: Option<LinuxSeccomp>,
}

impl HuskExecutor {
    /// The executor of a container's init (libcontainer installs its seccomp filter).
    pub fn for_init() -> Self {
        Self::default()
    }

    /// The executor of a process exec'd in the container whose spec is `container_spec`.
    pub fn for_exec(container_spec: &Spec) -> Self {
        let exec_seccomp = container_spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone());
        Self { exec_seccomp }
    }
}

impl Executor for HuskExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let invalid = |e: LookupError| ExecutorError::Other(e.to_string());
        let (args, env) = process_args_env(spec).map_err(invalid)?;
        let program = resolve(&args[0], env).map_err(invalid)?;
        let cstring = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| ExecutorError::Other(format!("{args:?} contains a NUL byte")))
        };
        let program = cstring(program.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(filter) = &self.exec_seccomp {
            install(filter)?;
        }
        // The environment is the process's own: libcontainer's setup_envs set it.
        let err = match nix::unistd::execv(&program, &argv) {
            Ok(never) => match never {},
            Err(err) => err,
        };
        Err(ExecutorError::Other(format!(
            "executing {program:?} for {:?}: {err}",
            args[0]
        )))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if self.exec_seccomp.as_ref().is_some_and(seccomp::is_notify) {
            return Err(ExecutorValidationError::ArgValidationError(
                "seccomp notify (SCMP_ACT_NOTIFY) is not supported for exec'd processes".into(),
            ));
        }
        let invalid = |e: LookupError| ExecutorValidationError::ArgValidationError(e.to_string());
        let (args, env) = process_args_env(spec).map_err(invalid)?;
        resolve(&args[0], env).map(|_| ()).map_err(invalid)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn env(path: &str) -> Vec<String> {
        vec!["HOME=/".into(), format!("PATH={path}")]
    }

    #[test]
    fn a_name_with_a_slash_runs_without_path() {
        let tmp = tempfile::tempdir().unwrap();
        let prog = file(tmp.path(), "pause", 0o755);
        let name = prog.to_str().unwrap();
        assert_eq!(resolve(name, &["HOME=/".into()]), Ok(prog.clone()));
        assert_eq!(resolve(name, &[]), Ok(prog));
    }

    #[test]
    fn a_bare_name_without_path_is_not_found_and_says_why() {
        let err = resolve("sh", &["HOME=/".into()]).unwrap_err();
        assert_eq!(err, LookupError::NoPath { name: "sh".into() });
        assert!(err.to_string().contains("no PATH"), "{err}");
    }

    #[test]
    fn a_bare_name_is_searched_in_path_order_skipping_non_executables() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        file(a.path(), "tool", 0o644);
        std::fs::create_dir(b.path().join("tool")).unwrap();
        let wanted = file(c.path(), "tool", 0o700);
        file(c.path(), "other", 0o755);
        let search = format!(
            "::{}:{}:{}",
            a.path().display(),
            b.path().display(),
            c.path().display()
        );
        assert_eq!(resolve("tool", &env(&search)), Ok(wanted));
        let err = resolve("absent", &env(&search)).unwrap_err();
        assert!(matches!(err, LookupError::NotInPath { .. }), "{err}");
    }

    #[test]
    fn the_last_path_entry_wins_like_the_environment() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        file(a.path(), "tool", 0o755);
        let wanted = file(b.path(), "tool", 0o755);
        let mut e = env(&a.path().display().to_string());
        e.push(format!("PATH={}", b.path().display()));
        assert_eq!(resolve("tool", &e), Ok(wanted));
    }

    #[test]
    fn a_missing_or_unexecutable_path_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert_eq!(
            resolve(missing.to_str().unwrap(), &[]),
            Err(LookupError::Missing(missing))
        );
        let plain = file(tmp.path(), "data", 0o644);
        assert_eq!(
            resolve(plain.to_str().unwrap(), &[]),
            Err(LookupError::NotExecutable(plain))
        );
        let dir = tmp.path().to_path_buf();
        assert_eq!(
            resolve(dir.to_str().unwrap(), &[]),
            Err(LookupError::NotExecutable(dir))
        );
    }
}
