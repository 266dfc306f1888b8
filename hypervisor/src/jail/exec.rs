//! `husk-vmm --exec <file>`: jail this process as the file describes, then execute a
//! program husk does not build (QEMU) inside the jail. The program starts with no
//! capabilities, `no_new_privs`, an unprivileged uid, bounded rlimits and only the
//! environment the file gives, and sees only the jail's root.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Contents, JailConfig, JailError, enter};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub jail: JailConfig,
    pub contents: Contents,
    /// The program as the jail sees it; it must lie in one of `contents.programs`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The program's whole environment, `NAME=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
}

impl ExecConfig {
    pub fn from_file(path: &Path) -> Result<Self, JailError> {
        let text = std::fs::read(path).map_err(super::io(format!("reading {path:?}")))?;
        let config: Self =
            serde_json::from_slice(&text).map_err(|e| JailError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> Result<String, JailError> {
        serde_json::to_string_pretty(self).map_err(|e| JailError::Invalid(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), JailError> {
        self.jail.validate().map_err(JailError::Invalid)?;
        self.contents.validate().map_err(JailError::Invalid)?;
        if !self
            .contents
            .programs
            .iter()
            .any(|p| self.program.starts_with(&p.inside))
        {
            return Err(JailError::Invalid(format!(
                "{:?} is in none of the jail's program directories",
                self.program
            )));
        }
        Ok(())
    }

    /// Enters the jail and replaces this process with the program; returns only on failure.
    pub fn run(&self) -> Result<Infallible, JailError> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| JailError::Invalid("an argument holds a NUL".into()))
        };
        // Prepared before the jail: afterwards nothing but the exec is left to fail.
        let program = cstring(self.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in &self.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let env = self
            .env
            .iter()
            .map(|e| cstring(e.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        enter(&self.jail, &self.contents)?;
        nix::unistd::execve(&program, &argv, &env).map_err(super::sys(format!(
            "executing {:?} in the jail",
            self.program
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::Bind;

    fn sample() -> ExecConfig {
        ExecConfig {
            jail: JailConfig {
                root: "/state/pod/qemu-root".into(),
                sockets: "/state/pod/qemu".into(),
                uid: 1_500_000_001,
                gid: 1_500_000_001,
            },
            contents: Contents {
                programs: vec![Bind {
                    host: "/usr".into(),
                    inside: "/usr".into(),
                }],
                threads: 8,
                ..Contents::default()
            },
            program: "/usr/bin/qemu-system-x86_64".into(),
            args: vec!["-nodefaults".into()],
            env: vec!["HUSK_POD_DIR=/state/pod".into()],
        }
    }

    #[test]
    fn round_trips_and_refuses_a_program_outside_the_jail() {
        let config = sample();
        config.validate().unwrap();
        let back: ExecConfig = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(back, config);
        let mut outside = sample();
        outside.program = "/opt/qemu/bin/qemu".into();
        assert!(outside.validate().is_err());
        let mut root = sample();
        root.jail.uid = 0;
        assert!(root.validate().is_err());
    }
}
