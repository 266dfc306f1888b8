//! The test's CNI network: one `bridge` + `host-local` + `portmap` conflist (Debian's
//! `containernetworking-plugins` in `/usr/lib/cni`) with a bridge name and subnet of its
//! own, and IP allocations kept in the test directory, so tests running at once never
//! share a bridge or an allocation file.
//!
//! The bridge has no address (`isGateway: false`) and no masquerading (`ipMasq: false`):
//! the host's routes, iptables and sysctls stay untouched, except by `portmap` for a pod
//! with hostPort mappings (a test that uses them gives the bridge [`CniNetwork::gateway`]
//! so the host can route to the pods).
//!
//! Leftovers the checker looks for: the pods' network namespaces (`/var/run/netns/cni-*`,
//! recorded per sandbox), host-local allocation files, ports still attached to the
//! bridge (veth ends) and `portmap`'s NAT rules for this network. The bridge itself is created by the plugin on the first ADD and
//! never deleted by it; [`CniNetwork::teardown`] removes it at the end of the test.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::cmd::Cmd;

/// The conflist file name in the conf dir.
const CONFLIST: &str = "10-husk-test.conflist";
/// Bound on `ip link` commands.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// One test's CNI network.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    name: String,
    bridge: String,
    subnet: String,
    /// The IPv6 range of the dual-stack network (`fd99:N::/64`).
    subnet6: String,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
}

impl CniNetwork {
    /// Names derived from the test tag; files under `dir/cni/`.
    pub fn new(dir: &Path, tag: &str) -> Self {
        let h = Sha256::digest(tag.as_bytes());
        Self {
            name: format!("husk-{tag}"),
            // Interface names have at most 15 bytes.
            bridge: format!("hk{}", &hex::encode(h)[..10]),
            subnet: format!("10.99.{}.0/24", h[0]),
            subnet6: format!("fd99:{:x}::/64", h[0]),
            conf_dir: dir.join("cni/net.d"),
            ipam_dir: dir.join("cni/ipam"),
        }
    }

    /// The directory CRI reads the conflist from.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The bridge interface.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The subnet pods get addresses from (`10.99.N.0/24`).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The network's name in the conflist.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IPv6 subnet pods also get an address from (`fd99:N::/64`).
    pub fn subnet6(&self) -> &str {
        &self.subnet6
    }

    /// Whether `ip` is in the test's subnet (a pod address host-local handed out).
    /// The subnet's first address: what a node's bridge would carry as the pods' gateway.
    pub fn gateway(&self) -> String {
        self.subnet.replace("0/24", "1")
    }

    pub fn owns(&self, ip: &str) -> bool {
        let prefix = self.subnet.trim_end_matches("0/24");
        ip.parse::<IpAddr>().is_ok() && ip.starts_with(prefix) && ip.len() > prefix.len()
    }

    /// The conflist JSON.
    pub fn conflist(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    // Dual-stack: every pod gets an IPv4 and an IPv6 address.
                    "ranges": [[{ "subnet": self.subnet }], [{ "subnet": self.subnet6 }]],
                    "dataDir": self.ipam_dir,
                }
            }, {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
            }]
        })
    }

    /// Writes the conflist; checks the plugins it names are installed.
    pub fn write(&self) -> Result<()> {
        for plugin in ["bridge", "host-local", "loopback", "portmap"] {
            let p = Path::new(super::config::CNI_BIN_DIR).join(plugin);
            ensure!(
                p.is_file(),
                "CNI plugin {} is missing: install containernetworking-plugins (`cargo xtask deps`)",
                p.display()
            );
        }
        fs::create_dir_all(&self.conf_dir)
            .with_context(|| format!("creating {}", self.conf_dir.display()))?;
        let file = self.conf_dir.join(CONFLIST);
        fs::write(&file, serde_json::to_vec_pretty(&self.conflist())?)
            .with_context(|| format!("writing {}", file.display()))
    }

    /// IP allocations host-local still holds.
    fn allocations(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.ipam_dir.join(&self.name)) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
            .map(|e| e.path())
            .collect()
    }

    /// Interfaces still attached to the bridge.
    fn bridge_ports(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(Path::new("/sys/class/net").join(&self.bridge).join("brif"))
        else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// What the test's pods left of the network: netns files among `netns`, allocations,
    /// bridge ports.
    pub fn leftovers(&self, netns: &[PathBuf]) -> Vec<String> {
        let mut found: Vec<String> = netns
            .iter()
            .filter(|p| p.exists())
            .map(|p| format!("network namespace {}", p.display()))
            .collect();
        found.extend(
            self.allocations()
                .iter()
                .map(|p| format!("host-local IP allocation {}", p.display())),
        );
        found.extend(
            self.bridge_ports()
                .iter()
                .map(|p| format!("interface {p} still attached to bridge {}", self.bridge)),
        );
        found.extend(
            self.host_port_rules()
                .into_iter()
                .map(|r| format!("portmap NAT rule left: {r}")),
        );
        found
    }

    /// `portmap`'s NAT rules that name this network (its DNAT chains carry a comment with
    /// the network name and the sandbox id).
    fn host_port_rules(&self) -> Vec<String> {
        let Ok(out) = Cmd::new("iptables")
            .args(["-w", "5", "-t", "nat", "-S"])
            .timeout(IP_TIMEOUT)
            .checked()
        else {
            return Vec::new();
        };
        let needle = format!("\"{}\"", self.name);
        out.stdout_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Deletes the bridge (the plugin never does) and checks it is gone.
    pub fn teardown(&self) -> Result<()> {
        if self.bridge_exists() {
            Cmd::new("ip")
                .args(["link", "del", &self.bridge])
                .timeout(IP_TIMEOUT)
                .checked()
                .with_context(|| format!("deleting the test bridge {}", self.bridge))?;
        }
        ensure!(
            !self.bridge_exists(),
            "bridge {} still exists after deleting it",
            self.bridge
        );
        Ok(())
    }

    /// Best effort after a failed test: unmounts and removes the given netns files.
    pub fn force_cleanup(&self, netns: &[PathBuf]) {
        for p in netns.iter().filter(|p| p.exists()) {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_file(p);
        }
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet_of(c: &serde_json::Value) -> String {
        c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn names_fit_and_differ_per_test() {
        let a = CniNetwork::new(Path::new("/t/a"), "ht1x2");
        let b = CniNetwork::new(Path::new("/t/b"), "ht1x3");
        assert!(a.bridge().len() <= 15);
        assert_ne!(a.bridge(), b.bridge());
        let c = a.conflist();
        assert_eq!(c["plugins"][0]["bridge"], a.bridge());
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/t/a/cni/ipam");
        assert_eq!(c["plugins"][0]["isGateway"], false);
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(a.gateway(), subnet_of(&c).replace("0/24", "1"));
        assert_eq!(a.conf_dir(), Path::new("/t/a/cni/net.d"));
        let subnet = c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
            .as_str()
            .unwrap()
            .to_owned();
        let ip = subnet.replace("0/24", "2");
        assert!(a.owns(&ip), "{ip} in {subnet}");
        let subnet6 = c["plugins"][0]["ipam"]["ranges"][1][0]["subnet"]
            .as_str()
            .unwrap();
        assert!(
            subnet6.starts_with("fd99:") && subnet6.ends_with("::/64"),
            "{subnet6}"
        );
        assert!(!a.owns("192.0.2.1") && !a.owns(""));
    }

    #[test]
    fn leftovers_are_found() {
        let dir = std::env::temp_dir().join(format!("husk-cni-test-{}", std::process::id()));
        let net = CniNetwork::new(&dir, "htleft");
        let alloc_dir = dir.join("cni/ipam").join(net.name());
        fs::create_dir_all(&alloc_dir).unwrap();
        for f in ["lock", "last_reserved_ip.0"] {
            fs::write(alloc_dir.join(f), "").unwrap();
        }
        let netns = dir.join("cni-1234");
        assert!(net.leftovers(std::slice::from_ref(&netns)).is_empty());
        fs::write(alloc_dir.join("10.99.7.2"), "").unwrap();
        fs::write(&netns, "").unwrap();
        let found = net.leftovers(&[netns]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("network namespace") && found[1].contains("10.99.7.2"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
