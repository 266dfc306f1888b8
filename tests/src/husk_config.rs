//! The part of the husk configuration file (`/etc/husk/config.toml`, or `HUSK_CONFIG`)
//! that the tooling writes: `cargo xtask build` generates `target/husk/config.toml` with
//! it, and tests derive fault configurations (missing kernel, bogus hypervisor path) from
//! that file. Every other key of the shim's schema keeps the shim's default. The shim owns
//! the full schema (see `deploy/config.toml`); this type rejects keys it does not know so
//! a test can never silently run with a setting it did not mean.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;

/// Environment variable the shim reads its config path from.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// The agent connect timeout the shim defaults to.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30_000;

/// Errors reading or writing a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File access failed.
    #[error("{what} husk config {path}: {source}")]
    Io {
        /// Reading or writing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("parsing husk config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser error.
        source: toml::de::Error,
    },
    /// Serialising failed (only non-UTF-8 paths can cause this).
    #[error("serialising husk config: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// Which VMM the shim uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The built-in VMM where hardware KVM runs standard guests, else QEMU.
    Auto,
    /// Always QEMU (TCG when KVM is unusable).
    Qemu,
}

/// `[hypervisor]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorConfig {
    /// `auto` or `qemu`.
    pub backend: Backend,
    /// QEMU binary (name looked up on `PATH`, or absolute).
    pub qemu_path: PathBuf,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Run pods under QEMU's TCG where KVM cannot run guests (these build machines have
    /// none); the installed default is `false`.
    pub allow_software_emulation: bool,
}

/// `[virtiofs]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtiofsConfig {
    /// The `virtiofsd` binary.
    pub virtiofsd_path: PathBuf,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// How long the shim waits for the guest agent to answer.
    pub connect_timeout_ms: u64,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HuskConfig {
    /// `[hypervisor]`.
    pub hypervisor: HypervisorConfig,
    /// `[virtiofs]`.
    pub virtiofs: VirtiofsConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
}

impl HuskConfig {
    /// A config using the artifacts in `a` (and `qemu-system-x86_64` from `PATH`).
    pub fn for_artifacts(a: &Artifacts) -> Self {
        Self {
            hypervisor: HypervisorConfig {
                backend: Backend::Auto,
                qemu_path: PathBuf::from("qemu-system-x86_64"),
                kernel: a.kernel(),
                initrd: a.initrd(),
                allow_software_emulation: true,
            },
            virtiofs: VirtiofsConfig {
                virtiofsd_path: a.virtiofsd(),
            },
            agent: AgentConfig {
                connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            },
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The TOML text, with a header saying where it came from.
    pub fn to_toml(&self, header: &str) -> Result<String, ConfigError> {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&toml::to_string(self)?);
        Ok(out)
    }

    /// Writes the file atomically (temporary file + rename).
    pub fn write(&self, path: &Path, header: &str) -> Result<(), ConfigError> {
        let text = self.to_toml(header)?;
        let tmp = path.with_extension(format!("toml.tmp-{}", std::process::id()));
        let io = |source| ConfigError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        };
        fs::write(&tmp, text).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exactly_the_documented_schema() {
        let cfg = HuskConfig::for_artifacts(&Artifacts::new("/a"));
        let text = cfg.to_toml("generated").unwrap();
        assert_eq!(
            text,
            "# generated\n\
             [hypervisor]\n\
             backend = \"auto\"\n\
             qemu_path = \"qemu-system-x86_64\"\n\
             kernel = \"/a/vmlinuz\"\n\
             initrd = \"/a/initrd.img\"\n\
             allow_software_emulation = true\n\
             \n\
             [virtiofs]\n\
             virtiofsd_path = \"/a/virtiofsd\"\n\
             \n\
             [agent]\n\
             connect_timeout_ms = 30000\n"
        );
        assert_eq!(toml::from_str::<HuskConfig>(&text).unwrap(), cfg);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let cfg = HuskConfig::for_artifacts(&Artifacts::new("/a"));
        let text = cfg.to_toml("").unwrap() + "bogus = 1\n";
        assert!(toml::from_str::<HuskConfig>(&text).is_err());
    }
}
