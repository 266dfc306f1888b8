//! husk's configuration: one typed TOML schema, every key optional with the default shown in
//! `deploy/config.toml`. Unknown keys are errors (a typo must not silently fall back).
//!
//! Where it comes from, first match wins: the containerd runtime option `ConfigPath` (CRI's
//! `[plugins.cri.containerd.runtimes.husk.options] ConfigPath = …`), the `HUSK_CONFIG`
//! environment variable of containerd, then `/etc/husk/config.toml`. A missing default file
//! means built-in defaults; a missing explicitly named file is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_hypervisor::{BackendChoice, SoftwareEmulation};
use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading husk config {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("husk config {path:?} is invalid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("husk config {path:?}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub virtiofs: VirtiofsConfig,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub backend: BackendChoice,
    pub qemu_path: String,
    /// husk's own monitor: a path, or a name looked up beside the shim, then on PATH.
    pub vmm_path: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// VM size when the pod has no CPU/memory limits (best-effort pods, `ctr run`).
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Added to the pod's limits (from CRI's sandbox-sizing annotations): the guest kernel,
    /// the agent and their buffers need room of their own.
    pub overhead_vcpus: u32,
    pub overhead_memory_mib: u32,
    /// Appended to husk's guest kernel command line.
    pub kernel_params: String,
    /// Run pods under QEMU's TCG where KVM cannot run guests. TCG is not a security
    /// boundary, so this is off unless the operator says otherwise.
    pub allow_software_emulation: bool,
    pub jail: JailSettings,
}

/// `[hypervisor.jail]`: the ids husk-vmm switches to, one per pod.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JailSettings {
    /// First uid (= gid) of the range reserved for husk's monitors; no host user may use
    /// an id in it.
    pub id_first: u32,
    pub id_count: u32,
    /// Where pods claim their id (shared by every shim on the host).
    pub id_lock_dir: PathBuf,
}

impl Default for JailSettings {
    fn default() -> Self {
        Self {
            id_first: 1_500_000_000,
            id_count: 65536,
            id_lock_dir: "/run/husk-vmm-ids".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VirtiofsConfig {
    pub virtiofsd_path: PathBuf,
    pub cache: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How long the guest agent has to answer after the VM starts.
    pub connect_timeout_ms: u64,
    /// Bound on every agent request except waiting for a process to exit.
    pub rpc_timeout_ms: u64,
    /// Guest agent log level: error, warn, info or debug.
    pub log_level: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Per-pod host state (sockets, shared directory) lives in `<state_dir>/<sandbox id>`.
    pub state_dir: PathBuf,
    /// The cgroup a pod's host processes (shim, VMM, virtiofsd) live under, as
    /// `<cgroup_parent>/<sandbox id>`, when the sandbox's OCI spec names no cgroup.
    pub cgroup_parent: String,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            qemu_path: "qemu-system-x86_64".into(),
            vmm_path: "husk-vmm".into(),
            kernel: "/usr/share/husk/vmlinuz".into(),
            initrd: "/usr/share/husk/initrd.img".into(),
            vcpus: 1,
            memory_mib: 256,
            overhead_vcpus: 1,
            overhead_memory_mib: 128,
            kernel_params: String::new(),
            allow_software_emulation: false,
            jail: JailSettings::default(),
        }
    }
}

impl HypervisorConfig {
    pub fn software_emulation(&self) -> SoftwareEmulation {
        if self.allow_software_emulation {
            SoftwareEmulation::Allowed
        } else {
            SoftwareEmulation::Refused
        }
    }
}

impl Default for VirtiofsConfig {
    fn default() -> Self {
        Self {
            virtiofsd_path: "/usr/local/libexec/husk/virtiofsd".into(),
            cache: "auto".into(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        // Generous: under software emulation on a busy 2-core host a boot takes seconds.
        Self {
            connect_timeout_ms: 30_000,
            rpc_timeout_ms: 30_000,
            log_level: "info".into(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: "/run/husk".into(),
            cgroup_parent: "/husk".into(),
        }
    }
}

impl Config {
    /// Loads the config named by `explicit` (runtime option), else `$HUSK_CONFIG`, else the
    /// default path.
    pub fn resolve(explicit: Option<&Path>) -> Result<(Self, PathBuf), ConfigError> {
        if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
            return Ok((Self::load(p)?, p.to_path_buf()));
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return Ok((Self::load(&p)?, p));
        }
        let default = PathBuf::from(DEFAULT_CONFIG_PATH);
        if default.exists() {
            Ok((Self::load(&default)?, default))
        } else {
            Ok((Self::default(), default))
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.agent.connect_timeout_ms == 0 || self.agent.rpc_timeout_ms == 0 {
            return Err("agent timeouts must be greater than 0".into());
        }
        if !["error", "warn", "info", "debug"].contains(&self.agent.log_level.as_str()) {
            return Err(format!(
                "agent.log_level {:?} is not one of error, warn, info, debug",
                self.agent.log_level
            ));
        }
        if !self.runtime.state_dir.is_absolute() {
            return Err(format!(
                "runtime.state_dir {:?} must be an absolute path",
                self.runtime.state_dir
            ));
        }
        let locks = &self.hypervisor.jail.id_lock_dir;
        // Each shim mounts a private tmpfs over the state directory: claims there would be
        // seen by no other pod.
        if !locks.is_absolute() || locks.starts_with(&self.runtime.state_dir) {
            return Err(format!(
                "hypervisor.jail.id_lock_dir {locks:?} must be an absolute path outside runtime.state_dir"
            ));
        }
        if !self.runtime.cgroup_parent.starts_with('/') {
            return Err(format!(
                "runtime.cgroup_parent {:?} must start with /",
                self.runtime.cgroup_parent
            ));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.connect_timeout_ms)
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.rpc_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            Config::parse("", Path::new("c.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse(
            "[hypervisor]\nkernel = \"/k\"\n[agent]\nconnect_timeout_ms = 3000\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.hypervisor.kernel, PathBuf::from("/k"));
        assert_eq!(c.hypervisor.memory_mib, 256);
        assert_eq!(c.connect_timeout(), Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse(
            "[hypervisor]\nkernal = \"/k\"\n",
            Path::new("/etc/husk/config.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kernal") && msg.contains("/etc/husk/config.toml"),
            "{msg}"
        );
        let err = Config::parse("[nope]\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::parse("[hypervisor]\nbackend = \"vmware\"\n", Path::new("c")).is_err());
        assert!(Config::parse("[agent]\nconnect_timeout_ms = 0\n", Path::new("c")).is_err());
        assert!(Config::parse("[agent]\nlog_level = \"loud\"\n", Path::new("c")).is_err());
        assert!(Config::parse("[runtime]\nstate_dir = \"rel\"\n", Path::new("c")).is_err());
        let inside = "[hypervisor.jail]\nid_lock_dir = \"/run/husk/ids\"\n";
        let err = Config::parse(inside, Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("id_lock_dir"), "{err}");
        assert!(Config::parse("[runtime]\ncgroup_parent = \"husk\"\n", Path::new("c")).is_err());
    }

    #[test]
    fn documented_defaults_match_the_built_in_ones() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = Config::resolve(Some(Path::new("/nonexistent/husk.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/husk.toml"));
    }
}
