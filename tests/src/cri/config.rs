//! The CRI part of a test containerd's config, in the schema of its flavour: containerd
//! 1.6's `version = 2` (everything under `io.containerd.grpc.v1.cri`) or 2.x's
//! `version = 3` (CRI split into `io.containerd.cri.v1.runtime`, `…cri.v1.images` and the
//! gRPC/streaming part `io.containerd.grpc.v1.cri`).
//!
//! The runtime handler `husk` is the table `deploy/containerd-husk.toml` ships (so the
//! tests exercise the shipped drop-in), with its `ConfigPath` pointed at the test's husk
//! config. `runc` stays the default runtime: containerd 1.6 refuses to load CRI when
//! `default_runtime_name` names no configured runtime, and a config that lists runtimes
//! replaces the built-in list.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::artifacts::HUSK_RUNTIME;
use crate::containerd::ContainerdFlavour;

/// The CRI runtime handler name (Kubernetes RuntimeClass `handler`).
pub const HANDLER: &str = "husk";
/// The shipped drop-in, relative to the repository root.
pub const DROPIN: &str = "deploy/containerd-husk.toml";
/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CRI settings of one test containerd.
#[derive(Debug, Clone)]
pub struct CriSettings {
    /// Which config schema to write.
    pub flavour: ContainerdFlavour,
    /// The `husk` runtime table (from [`DROPIN`]).
    pub husk_runtime: toml::Table,
    /// `options.ConfigPath` of the husk runtime.
    pub husk_config: PathBuf,
    /// `sandbox_image` (1.6) / `pinned_images.sandbox` (2.x).
    pub sandbox_image: String,
    /// CNI config directory (one conflist).
    pub cni_conf_dir: PathBuf,
    /// Stream server port on 127.0.0.1.
    pub stream_port: u16,
}

/// The repository root (this crate is `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// The `runtimes.husk` table of the drop-in text (`version = 2` schema), checked to run
/// `io.containerd.husk.v2`.
pub fn husk_runtime_from_dropin(text: &str) -> Result<toml::Table> {
    let doc: toml::Table = text.parse().context("parsing the containerd drop-in")?;
    let table = doc
        .get("plugins")
        .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
        .and_then(|c| c.get("containerd"))
        .and_then(|c| c.get("runtimes"))
        .and_then(|r| r.get(HANDLER))
        .and_then(toml::Value::as_table)
        .context(
            "the drop-in has no [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]",
        )?
        .clone();
    let runtime_type = table.get("runtime_type").and_then(toml::Value::as_str);
    ensure!(
        runtime_type == Some(HUSK_RUNTIME),
        "the drop-in's husk runtime_type is {runtime_type:?}, not {HUSK_RUNTIME}"
    );
    Ok(table)
}

/// Reads [`DROPIN`] from the repository.
pub fn shipped_husk_runtime() -> Result<toml::Table> {
    let path = repo_root().join(DROPIN);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the shipped drop-in {}", path.display()))?;
    husk_runtime_from_dropin(&text).with_context(|| path.display().to_string())
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// Writes `table` under the header `prefix` (values first, then subtables).
fn emit_table(out: &mut String, prefix: &str, table: &toml::Table) {
    let _ = writeln!(out, "[{prefix}]");
    for (k, v) in table.iter().filter(|(_, v)| !v.is_table()) {
        let _ = writeln!(out, "  {} = {v}", quote(k));
    }
    for (k, v) in table {
        if let Some(t) = v.as_table() {
            emit_table(out, &format!("{prefix}.{}", quote(k)), t);
        }
    }
}

impl CriSettings {
    /// The husk runtime table with `options.ConfigPath` set, or, for
    /// [`ContainerdFlavour::V2SandboxApi`], with the shim as sandboxer and no `options`:
    /// containerd before 2.4 reads a Sandbox API pod's runtime options as runc's when it
    /// starts a container ("can't unmarshal type runtimeoptions.v1.Options to output
    /// containerd.runc.v1.Options"; fixed by containerd commit b88ab5a), so the husk config
    /// comes from containerd's environment (`HUSK_CONFIG`) instead.
    fn runtime_table(&self) -> toml::Table {
        let mut t = self.husk_runtime.clone();
        if self.flavour == ContainerdFlavour::V2SandboxApi {
            t.remove("options");
            t.insert("sandboxer".into(), toml::Value::String("shim".into()));
            return t;
        }
        let options = t
            .entry("options")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(o) = options.as_table_mut() {
            o.insert(
                "ConfigPath".into(),
                toml::Value::String(self.husk_config.to_string_lossy().into_owned()),
            );
        }
        t
    }

    /// The text appended to the generated containerd config.
    pub fn to_toml(&self) -> String {
        let mut c = String::from("\n# CRI test world (husk-tests cri)\n");
        let stream = format!(
            "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = {}\n  \
             enable_tls_streaming = false\n",
            quote(&self.stream_port.to_string())
        );
        let runtime_common = "  enable_selinux = false\n  max_container_log_line_size = 16384\n";
        match self.flavour {
            ContainerdFlavour::System => {
                let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
                let _ = write!(
                    c,
                    "[{cri}]\n  sandbox_image = {}\n{stream}{runtime_common}\
                     [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  \
                     default_runtime_name = \"runc\"\n\
                     [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                     [{cri}.cni]\n  bin_dir = {}\n  conf_dir = {}\n  max_conf_num = 1\n",
                    quote(&self.sandbox_image),
                    quote(CNI_BIN_DIR),
                    path(&self.cni_conf_dir),
                );
                emit_table(
                    &mut c,
                    &format!("{cri}.containerd.runtimes.{HANDLER}"),
                    &self.runtime_table(),
                );
            }
            ContainerdFlavour::V2 | ContainerdFlavour::V2SandboxApi => {
                let images = "plugins.\"io.containerd.cri.v1.images\"";
                let runtime = "plugins.\"io.containerd.cri.v1.runtime\"";
                let _ = write!(
                    c,
                    "[{images}]\n  snapshotter = \"overlayfs\"\n\
                     [{images}.pinned_images]\n  sandbox = {}\n\
                     [{runtime}]\n{runtime_common}\
                     [{runtime}.containerd]\n  default_runtime_name = \"runc\"\n\
                     [{runtime}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                     [{runtime}.cni]\n  bin_dirs = [{}]\n  conf_dir = {}\n  max_conf_num = 1\n\
                     [plugins.\"io.containerd.grpc.v1.cri\"]\n{stream}\
                     [plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n",
                    quote(&self.sandbox_image),
                    quote(CNI_BIN_DIR),
                    path(&self.cni_conf_dir),
                );
                emit_table(
                    &mut c,
                    &format!("{runtime}.containerd.runtimes.{HANDLER}"),
                    &self.runtime_table(),
                );
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flavour: ContainerdFlavour) -> CriSettings {
        CriSettings {
            flavour,
            husk_runtime: shipped_husk_runtime().unwrap(),
            husk_config: PathBuf::from("/a/config.toml"),
            sandbox_image: "docker.io/library/husk-pause:latest".into(),
            cni_conf_dir: PathBuf::from("/t/cni/net.d"),
            stream_port: 40123,
        }
    }

    fn parse(extra: &str) -> toml::Table {
        // As appended to the base config, which already has a [plugins.x] table.
        let text = format!(
            "version = 2\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"/o\"\n{extra}"
        );
        text.parse().unwrap()
    }

    #[test]
    fn containerd_1_6_schema() {
        let t = parse(&settings(ContainerdFlavour::System).to_toml());
        let cri = &t["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("docker.io/library/husk-pause:latest")
        );
        assert_eq!(cri["stream_server_port"].as_str(), Some("40123"));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some(CNI_BIN_DIR));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/t/cni/net.d"));
        let husk = &cri["containerd"]["runtimes"]["husk"];
        assert_eq!(husk["runtime_type"].as_str(), Some(HUSK_RUNTIME));
        assert_eq!(
            husk["privileged_without_host_devices"].as_bool(),
            Some(true)
        );
        assert_eq!(
            husk["options"]["ConfigPath"].as_str(),
            Some("/a/config.toml")
        );
    }

    #[test]
    fn containerd_2_schema() {
        let t = parse(&settings(ContainerdFlavour::V2).to_toml());
        let p = &t["plugins"];
        assert_eq!(
            p["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("docker.io/library/husk-pause:latest")
        );
        let rt = &p["io.containerd.cri.v1.runtime"];
        assert_eq!(rt["cni"]["bin_dirs"][0].as_str(), Some(CNI_BIN_DIR));
        let husk = &rt["containerd"]["runtimes"]["husk"];
        assert_eq!(
            husk["options"]["ConfigPath"].as_str(),
            Some("/a/config.toml")
        );
        assert_eq!(
            p["io.containerd.grpc.v1.cri"]["stream_server_address"].as_str(),
            Some("127.0.0.1")
        );
        assert_eq!(
            p["io.containerd.nri.v1.nri"]["disable"].as_bool(),
            Some(true)
        );
        assert!(
            husk.get("sandboxer").is_none(),
            "the pause container by default"
        );
    }

    #[test]
    fn containerd_2_sandbox_api() {
        let t = parse(&settings(ContainerdFlavour::V2SandboxApi).to_toml());
        let husk = &t["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["husk"];
        assert_eq!(husk["sandboxer"].as_str(), Some("shim"));
        assert!(husk.get("options").is_none());
    }

    #[test]
    fn dropin_must_name_the_husk_runtime() {
        let bad = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n\
                   runtime_type = \"io.containerd.runc.v2\"\n";
        assert!(husk_runtime_from_dropin(bad).is_err());
        assert!(husk_runtime_from_dropin("version = 2\n").is_err());
    }
}
