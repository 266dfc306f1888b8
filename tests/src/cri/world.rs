//! One CRI test's world: a private containerd with CRI on (runtime handler `husk` from the
//! shipped drop-in, `ConfigPath` = the test's husk config, the local pause image as
//! sandbox image, the test's own CNI network, a stream server on 127.0.0.1), the offline
//! images in namespace `k8s.io`, a [`CriClient`], and the leak checker extended to what
//! CRI and CNI create.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use husk_tests::ContainerdFlavour;
//! use husk_tests::cri::CriWorld;
//! let w = CriWorld::start("lifecycle", ContainerdFlavour::System)?;
//! let (pod, _config) = w.run_pod("p1")?;
//! // ... CreateContainer, StartContainer, ...
//! w.client().stop_pod_sandbox(&pod)?;
//! w.client().remove_pod_sandbox(&pod)?;
//! w.finish()?; // fails if anything of the test is left behind
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_cri::v1::{ContainerConfig, NamespaceMode, PodSandboxConfig};

use super::client::CriClient;
use super::cni::CniNetwork;
use super::config::{CriSettings, HANDLER, shipped_husk_runtime};
use super::specs;
use crate::artifacts::Artifacts;
use crate::containerd::{Containerd, ContainerdFlavour, ContainerdOptions, major_version};
use crate::image::BusyboxImage;
use crate::leaks::{LeakReport, LeakScope};
use crate::procfs::{ProcInfo, snapshot};
use crate::scope::TestScope;

/// The containerd namespace CRI works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// After the test body, how long shims and VMs get to go away.
const LEAK_GRACE: Duration = Duration::from_secs(5);
/// How long CRI may take to see an imported image.
const IMAGE_SYNC: Duration = Duration::from_secs(20);
/// Bound on best-effort cleanup calls after a failed test.
const RESCUE_BOUND: Duration = Duration::from_secs(60);

/// What the test created through CRI.
#[derive(Debug, Default, Clone)]
struct Tracked {
    sandboxes: Vec<String>,
    containers: Vec<String>,
    netns: Vec<PathBuf>,
}

/// How long CRI may take to reload its state after containerd restarts.
const CRI_RELOAD: Duration = Duration::from_secs(30);

/// A running CRI test world; call [`CriWorld::finish`] at the end of a passing test.
#[derive(Debug)]
pub struct CriWorld {
    // Field order is drop order: the client and containerd go before the directory.
    client: CriClient,
    containerd: Containerd,
    network: CniNetwork,
    leaks: LeakScope,
    tracked: Mutex<Tracked>,
    husk_config: PathBuf,
    finished: bool,
    scope: TestScope,
}

/// A free TCP port on 127.0.0.1 (for the stream server).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The network namespace path in a verbose PodSandboxStatus `info` (containerd puts the
/// sandbox's OCI spec there as `runtimeSpec`).
pub fn netns_from_info(info: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

impl CriWorld {
    /// Starts the world with the artifacts' husk config as `ConfigPath`.
    pub fn start(name: &str, flavour: ContainerdFlavour) -> Result<Self> {
        Self::start_with(name, flavour, None)
    }

    /// Starts the world; `husk_config` (TOML text), if given, is written to the test
    /// directory and used as `ConfigPath` instead of `<artifacts>/config.toml`.
    pub fn start_with(
        name: &str,
        flavour: ContainerdFlavour,
        husk_config: Option<&str>,
    ) -> Result<Self> {
        let scope = TestScope::new(name)?;
        let artifacts = Artifacts::from_env()?;
        let husk_config = match husk_config {
            Some(text) => {
                let p = scope.dir().join("husk-config.toml");
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                p
            }
            None => artifacts.config(),
        };
        let cache = husk_kernel_config::cache_root()?;
        let busybox = BusyboxImage::ensure(&cache)?;
        let pause = BusyboxImage::ensure_pause(&cache)?;
        let network = CniNetwork::new(scope.dir(), scope.tag());
        network.write()?;
        let settings = CriSettings {
            flavour,
            husk_runtime: shipped_husk_runtime()?,
            husk_config: husk_config.clone(),
            sandbox_image: pause.reference.clone(),
            cni_conf_dir: network.conf_dir().to_owned(),
            stream_port: free_port()?,
        };
        let opts = ContainerdOptions {
            flavour,
            shim_dir: Some(artifacts.dir().to_owned()),
            // No HUSK_CONFIG: the shim must find its config through CRI's ConfigPath. Except
            // with the Sandbox API, whose pods cannot have runtime options before
            // containerd 2.4 ([`CriSettings`]).
            husk_config: (flavour == ContainerdFlavour::V2SandboxApi).then(|| husk_config.clone()),
            cri: true,
            extra_config: settings.to_toml(),
        };
        let containerd = Containerd::start(&scope, &opts)?;
        eprintln!(
            "husk-tests: CRI on {} {} ({}), CNI bridge {}",
            containerd.flavour(),
            containerd.version(),
            containerd.binaries().containerd.display(),
            network.bridge()
        );
        let leaks = containerd.leak_scope(scope.tag(), CRI_NAMESPACE);
        let ctr = containerd.ctr(CRI_NAMESPACE, Duration::from_secs(120));
        for image in [&busybox, &pause] {
            ctr.import(&image.archive, &image.reference)?;
        }
        let client = CriClient::connect(containerd.address())?;
        let version = client.version().with_context(|| {
            format!(
                "CRI is not serving; containerd log ({}), end:\n{}",
                containerd.log().display(),
                containerd.log_tail()
            )
        })?;
        if flavour.is_v2() {
            ensure!(
                major_version(version.runtime_version.trim_start_matches('v'))
                    .is_some_and(|m| m >= 2),
                "asked for containerd 2.x, but CRI reports {}",
                version.runtime_version
            );
        }
        let world = Self {
            client,
            containerd,
            network,
            leaks,
            tracked: Mutex::new(Tracked::default()),
            husk_config,
            finished: false,
            scope,
        };
        for image in [&busybox, &pause] {
            world.wait_image(&image.reference)?;
        }
        Ok(world)
    }

    /// Imports one more offline image and waits until CRI sees it.
    pub fn import(&self, image: &BusyboxImage) -> Result<()> {
        self.containerd
            .ctr(CRI_NAMESPACE, Duration::from_secs(120))
            .import(&image.archive, &image.reference)?;
        self.wait_image(&image.reference)
    }

    fn wait_image(&self, reference: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.client.image_id(reference)?.is_some() {
                return Ok(());
            }
            if start.elapsed() > IMAGE_SYNC {
                bail!("CRI does not see the imported image {reference} after {IMAGE_SYNC:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The CRI client.
    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// Restarts containerd ([`Containerd::restart`]), down for `down_for`, and reconnects.
    pub fn restart_containerd(&mut self, down_for: Duration) -> Result<()> {
        self.containerd.restart(down_for)?;
        if let Some(pid) = self.containerd.pid() {
            self.leaks.exclude_pid(pid);
        }
        self.client = CriClient::connect(self.containerd.address())?;
        // CRI answers "not initialized yet" while it reloads its state.
        let start = Instant::now();
        loop {
            match self.client.version() {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > CRI_RELOAD => {
                    return Err(e).context("CRI is not serving after the restart");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The private containerd (its log holds the shims' messages too).
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.scope.dir()
    }

    /// The husk config CRI passes as `ConfigPath`.
    pub fn husk_config(&self) -> &Path {
        &self.husk_config
    }

    /// The CNI network.
    pub fn network(&self) -> &CniNetwork {
        &self.network
    }

    /// The whole containerd log (containerd's and the shims' messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.containerd.log()).unwrap_or_default()
    }

    /// A pod config `name` for this test (log directory in the test directory).
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        let logs = self.dir().join("pods").join(name);
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(specs::pod_config(name, &self.scope.id(name), &logs))
    }

    /// `RunPodSandbox` with handler `husk`, recorded for the leak check (with its network
    /// namespace).
    pub fn run_pod_with(&self, config: &PodSandboxConfig) -> Result<String> {
        let id = self.client.run_pod_sandbox(config, HANDLER)?;
        self.tracked().sandboxes.push(id.clone());
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == NamespaceMode::Node as i32);
        if host_network {
            return Ok(id);
        }
        self.check_sandboxer(&id)?;
        let status = self.client.pod_sandbox_status(&id, true)?;
        let info = status.info.get("info").cloned().unwrap_or_default();
        let netns = netns_from_info(&info).ok_or_else(|| {
            anyhow!("PodSandboxStatus of {id} names no network namespace; info: {info}")
        })?;
        self.tracked().netns.push(netns);
        Ok(id)
    }

    /// The pod runs the way the flavour says: with a pause container (a containerd
    /// container named like the pod), or through the shim's Sandbox API without one.
    fn check_sandboxer(&self, pod: &str) -> Result<()> {
        let containers = self
            .containerd
            .ctr(CRI_NAMESPACE, Duration::from_secs(10))
            .containers()?;
        let has_pause = containers.iter().any(|c| c == pod);
        if self.containerd.flavour() == ContainerdFlavour::V2SandboxApi {
            ensure!(
                !has_pause,
                "pod {pod} has a pause container although CRI runs husk through the Sandbox API"
            );
        } else {
            ensure!(has_pause, "pod {pod} has no pause container");
        }
        Ok(())
    }

    /// A default pod `name`: its id and config.
    pub fn run_pod(&self, name: &str) -> Result<(String, PodSandboxConfig)> {
        let config = self.pod_config(name)?;
        let id = self.run_pod_with(&config)?;
        Ok((id, config))
    }

    /// `CreateContainer`, recorded for the leak check.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String> {
        let id = self.client.create_container(pod, config, pod_config)?;
        self.tracked().containers.push(id.clone());
        Ok(id)
    }

    /// Creates and starts a busybox container `name` running `args`.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        args: &[&str],
    ) -> Result<String> {
        let id = self.create_container(pod, &specs::container_config(name, args), pod_config)?;
        self.client.start_container(&id)?;
        Ok(id)
    }

    /// The network namespaces of the pods so far.
    pub fn netns_paths(&self) -> Vec<PathBuf> {
        self.tracked().netns.clone()
    }

    /// Live, non-zombie processes called `name` whose command line mentions `needle`.
    pub fn processes(name: &str, needle: &str) -> Vec<ProcInfo> {
        snapshot()
            .into_iter()
            .filter(|p| p.name() == name && p.mentions(needle) && !p.is_zombie())
            .collect()
    }

    /// The monitor of sandbox `id` (its pod directory is named after it): QEMU, or husk-vmm
    /// running the VM (`--config`; not QEMU's vsock backend, `--vsock-backend`).
    pub fn vmms(id: &str) -> Vec<ProcInfo> {
        let mut vmms = Self::processes("qemu-system-x86_64", id);
        vmms.extend(
            Self::processes("husk-vmm", id)
                .into_iter()
                .filter(|p| p.mentions("--config")),
        );
        vmms
    }

    /// Everything of the test that is still there: what the generic checker finds for the
    /// tracked ids, CRI objects still listed, CRI/husk state named after them, CNI
    /// leftovers.
    fn leftovers(&self) -> Result<(LeakReport, Vec<String>)> {
        let t = self.tracked().clone();
        let ids: Vec<String> = t.sandboxes.iter().chain(&t.containers).cloned().collect();
        let report = self.leaks.check(&ids)?;
        let mut more = self.network.leftovers(&t.netns);
        match self.client.list_pod_sandbox(None) {
            Ok(pods) => more.extend(
                pods.iter()
                    .map(|p| format!("pod sandbox {} still listed", p.id)),
            ),
            Err(e) => more.push(format!("ListPodSandbox failed: {e}")),
        }
        match self.client.list_containers(None) {
            Ok(cs) => more.extend(
                cs.iter()
                    .map(|c| format!("container {} still listed", c.id)),
            ),
            Err(e) => more.push(format!("ListContainers failed: {e}")),
        }
        let root = self.dir().join("root");
        let state = self.dir().join("state");
        for id in &ids {
            let mut candidates = vec![
                Path::new("/run/husk").join(id),
                state
                    .join("io.containerd.runtime.v2.task")
                    .join(CRI_NAMESPACE)
                    .join(id),
            ];
            for base in [&root, &state] {
                for kind in ["sandboxes", "containers"] {
                    candidates.push(base.join("io.containerd.grpc.v1.cri").join(kind).join(id));
                }
            }
            more.extend(
                candidates
                    .into_iter()
                    .filter(|p| p.exists())
                    .map(|p| format!("path {}", p.display())),
            );
        }
        Ok((report, more))
    }

    fn wait_clean(&self, within: Duration) -> Result<LeakReport> {
        let start = Instant::now();
        loop {
            let (report, more) = self.leftovers()?;
            if report.is_clean() && more.is_empty() {
                return Ok(report);
            }
            if start.elapsed() >= within {
                let mut text = report.to_string();
                for m in more {
                    text.push_str(&format!("  {m}\n"));
                }
                bail!(
                    "leaked after the test (waited {within:?}):\n{text}containerd log ({}), end:\n{}",
                    self.containerd.log().display(),
                    self.containerd.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks for leaks (with a grace period), stops containerd, deletes the test bridge,
    /// checks again and removes the test directory.
    pub fn finish(mut self) -> Result<LeakReport> {
        self.finished = true;
        let checked = self.wait_clean(LEAK_GRACE);
        if let Err(e) = checked {
            self.rescue();
            return Err(e);
        }
        self.containerd.stop()?;
        let t = self.tracked().clone();
        let ids: Vec<String> = t.sandboxes.iter().chain(&t.containers).cloned().collect();
        let report = self
            .leaks
            .wait_clean(&ids, Duration::from_secs(5))
            .map_err(|e| anyhow!("after stopping containerd: {e}"));
        self.leaks.kill_attributed();
        let report = report?;
        self.network.teardown()?;
        eprintln!(
            "husk-tests: nothing left of {} pod(s), {} container(s), {} network namespace(s); \
             bridge {} removed",
            t.sandboxes.len(),
            t.containers.len(),
            t.netns.len(),
            self.network.bridge()
        );
        if !report.suspects.is_empty() {
            eprintln!("husk-tests: warnings after the test:\n{report}");
        }
        self.scope.cleanup()?;
        Ok(report)
    }

    /// After a failure: removes what the test created as far as CRI still can (bounded),
    /// kills what remains, and removes netns files and the bridge.
    fn rescue(&self) {
        let start = Instant::now();
        let t = self.tracked().clone();
        for id in &t.sandboxes {
            if start.elapsed() > RESCUE_BOUND {
                break;
            }
            let _ = self.client.stop_pod_sandbox(id);
            let _ = self.client.remove_pod_sandbox(id);
        }
        // Give shims and VMs the usual time to go by themselves: what is killed below
        // really was left behind.
        let ids: Vec<String> = t.sandboxes.iter().chain(&t.containers).cloned().collect();
        let _ = self.leaks.wait_clean(&ids, LEAK_GRACE);
        self.leaks.kill_and_report();
        self.network.force_cleanup(&t.netns);
    }
}

impl Drop for CriWorld {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.containerd.print_log_tail("the test did not finish");
        self.rescue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_is_read_from_the_runtime_spec() {
        let info = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[
            {"type":"pid"},{"type":"ipc"},{"type":"uts"},
            {"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(
            netns_from_info(info),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert_eq!(netns_from_info(r#"{"runtimeSpec":{}}"#), None);
        assert_eq!(netns_from_info("not json"), None);
    }
}
