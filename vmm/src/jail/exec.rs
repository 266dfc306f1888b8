//! `husk-vmm --exec <file>`: jail this process as the file describes, then execute a
//! program husk does not build (QEMU) inside the jail. The program starts with no
//! capabilities, `no_new_privs`, an unprivileged uid, bounded rlimits and only the
//! environment the file gives, and sees only the jail's root.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use husk_vmm_config::ExecConfig;

use super::{JailError, enter};

/// Runs `config`: enters the jail and replaces this process with the program; returns
/// only on failure.
pub fn run(config: &ExecConfig) -> Result<Infallible, JailError> {
    let cstring = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| JailError::Invalid("an argument holds a NUL".into()))
    };
    // Prepared before the jail: afterwards nothing but the exec is left to fail.
    let program = cstring(config.program.as_os_str().as_bytes())?;
    let mut argv = vec![program.clone()];
    for arg in &config.args {
        argv.push(cstring(arg.as_bytes())?);
    }
    let env = config
        .env
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    enter(&config.jail, &config.contents)?;
    nix::unistd::execve(&program, &argv, &env).map_err(super::sys(format!(
        "executing {:?} in the jail",
        config.program
    )))
}
