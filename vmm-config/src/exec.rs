//! `husk-vmm --exec`: a program husk does not build (QEMU), to be run inside a jail.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jail::{Contents, JailConfig};
use crate::{ConfigError, LaunchFile};

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

impl LaunchFile for ExecConfig {
    const WHAT: &'static str = "jailed program description";

    fn validate(&self) -> Result<(), ConfigError> {
        self.jail.validate().map_err(ConfigError::Invalid)?;
        self.contents.validate().map_err(ConfigError::Invalid)?;
        if !self
            .contents
            .programs
            .iter()
            .any(|p| self.program.starts_with(&p.inside))
        {
            return Err(ConfigError::Invalid(format!(
                "{:?} is in none of the jail's program directories",
                self.program
            )));
        }
        Ok(())
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
