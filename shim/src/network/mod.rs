//! The pod's network, host side (Kata's "tcfilter" model). CNI has set up the pod's network
//! namespace (a veth with the pod's addresses, routes, maybe static neighbours); the VM is
//! to own that network. For each interface the shim creates a tap in the namespace, joins
//! the two with traffic-control redirects in both directions ([`tc`]) and hands the tap to
//! the VMM as a descriptor ([`tap`]); the guest NIC gets the interface's MAC and the agent
//! recreates its addresses, routes and neighbours ([`config`]). The namespace's own stack
//! then never sees a frame: the pod's address answers from inside the VM.
//!
//! Connections that CRI PortForward makes to the namespace's loopback are carried into the
//! guest by [`port_forward`].
//!
//! Everything is done through netlink and `/dev/net/tun` (no `ip` or `tc` processes), in
//! bounded time, and undone on failure and at [`PodNetwork::detach`], which also copes
//! with a namespace that vanished meanwhile.

pub mod config;
mod inspect;
mod netns;
pub mod port_forward;
mod tap;
mod tc;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_hypervisor::NetSpec;
use slog::{Logger, info, warn};

use config::Interface;
use inspect::Link;
pub use netns::NetNs;
use port_forward::{PortForwardError, PortForwarder};

/// Interfaces one VM takes (each is a virtio device and an IRQ line of its own).
pub const MAX_INTERFACES: usize = 8;
/// Bound on setting the network up (netlink answers in milliseconds).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on taking it down.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "the pod's network namespace {path:?} cannot be opened: {source} (is the CNI setup of the pod complete?)"
    )]
    OpenNamespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a network namespace")]
    NotANamespace(PathBuf),
    #[error("entering the pod's network namespace: {0}")]
    Enter(#[source] nix::Error),
    #[error("in the pod's network namespace: {0}")]
    InNamespace(#[source] std::io::Error),
    #[error("starting a thread for the pod's network namespace: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the thread working in the pod's network namespace panicked")]
    ThreadPanicked,
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface index {0} is out of range")]
    BadIndex(u32),
    #[error(
        "interface {name} (link/{kind}) cannot be carried into the VM: husk carries Ethernet interfaces with a MAC address only"
    )]
    Unsupported { name: String, kind: String },
    #[error("the pod has {count} network interfaces; a husk VM takes at most {MAX_INTERFACES}")]
    TooMany { count: usize },
    #[error("setting up the pod network took longer than {0:?}")]
    Timeout(Duration),
}

/// One pod interface joined to its tap.
struct Joined {
    interface: Interface,
    link_index: u32,
    tap_name: String,
    tap: OwnedFd,
}

/// The pod's network, taken over for its VM. Dropping it closes the taps (they vanish with
/// their last descriptor); [`PodNetwork::detach`] also removes the redirects.
pub struct PodNetwork {
    netns: NetNs,
    joined: Vec<Joined>,
    /// Carries CRI PortForward's connections into the guest, once it is up.
    forwarder: Option<PortForwarder>,
    log: Logger,
}

impl PodNetwork {
    /// Takes over every interface CNI set up in the namespace at `netns`. An interface
    /// that is down is left alone; an up one that is not Ethernet is an error, as are more
    /// than [`MAX_INTERFACES`]. Nothing is left behind on failure.
    pub async fn attach(netns: &Path, log: &Logger) -> Result<Self, NetworkError> {
        let ns = NetNs::open(netns)?;
        let log = log.new(slog::o!("netns" => netns.display().to_string()));
        let mut network = Self {
            netns: ns,
            joined: Vec::new(),
            forwarder: None,
            log,
        };
        let attached = tokio::time::timeout(ATTACH_TIMEOUT, network.join_all()).await;
        match attached {
            Ok(Ok(())) => {
                info!(network.log, "pod network attached"; "interfaces" => network.joined.len());
                Ok(network)
            }
            Ok(Err(e)) => {
                network.detach().await;
                Err(e)
            }
            Err(_) => {
                network.detach().await;
                Err(NetworkError::Timeout(ATTACH_TIMEOUT))
            }
        }
    }

    async fn join_all(&mut self) -> Result<(), NetworkError> {
        let handle = self.netns.rtnetlink().await?;
        let links: Vec<Link> = inspect::links(&handle)
            .await?
            .into_iter()
            .filter(|l| l.up)
            .collect();
        if links.len() > MAX_INTERFACES {
            return Err(NetworkError::TooMany { count: links.len() });
        }
        for link in &links {
            let Some(mac) = link.mac.filter(|_| link.ethernet) else {
                return Err(NetworkError::Unsupported {
                    name: link.name.clone(),
                    kind: link.kind.clone(),
                });
            };
            let interface = inspect::interface(&handle, link, mac).await?;
            let tap_name = tap::name(self.joined.len());
            let name = tap_name.clone();
            let tap = self.netns.run_in(move || {
                let fd = tap::create(&name)?;
                tap::disable_ipv6(&name)?;
                Ok(fd)
            })?;
            // Registered at once, so a failure below still removes it.
            self.joined.push(Joined {
                interface,
                link_index: link.index,
                tap_name: tap_name.clone(),
                tap,
            });
            let tap_index = tap_up(&handle, &tap_name, link.mtu).await?;
            tc::join(&handle, link.index, tap_index).await?;
        }
        Ok(())
    }

    /// What the guest must configure, one entry per tap, in tap order.
    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.joined.iter().map(|j| &j.interface)
    }

    /// The taps' descriptors, for the VMM, in the order of [`Self::interfaces`].
    pub fn taps(&self) -> impl Iterator<Item = &OwnedFd> {
        self.joined.iter().map(|j| &j.tap)
    }

    /// The VM's network devices: one per interface, with its tap (a duplicate descriptor)
    /// and MAC, in the order of [`Self::interfaces`].
    pub fn vm_devices(&self) -> std::io::Result<Vec<NetSpec>> {
        self.joined
            .iter()
            .map(|j| {
                Ok(NetSpec {
                    name: j.interface.name.clone(),
                    mac: j.interface.mac,
                    tap: std::sync::Arc::new(j.tap.try_clone()?),
                })
            })
            .collect()
    }

    pub fn netns(&self) -> &Path {
        self.netns.path()
    }

    /// Starts carrying connections to the namespace's loopback into the guest, whose agent
    /// answers on the hybrid vsock socket `vsock_uds` ([`port_forward`]).
    pub fn forward_ports(&mut self, vsock_uds: PathBuf) -> Result<(), PortForwardError> {
        self.forwarder = Some(PortForwarder::start(&self.netns, vsock_uds, &self.log)?);
        Ok(())
    }

    /// Removes the redirects and the taps. Never fails: a namespace or interface that is
    /// gone already is what was wanted; anything else is logged.
    pub async fn detach(mut self) {
        // No new connection is taken into a VM that is going away.
        drop(self.forwarder.take());
        let joined = std::mem::take(&mut self.joined);
        if joined.is_empty() {
            return;
        }
        let undo = async {
            let handle = self.netns.rtnetlink().await?;
            for j in &joined {
                tc::unjoin(&handle, j.link_index).await?;
                delete_link(&handle, &j.tap_name).await?;
            }
            Ok::<(), NetworkError>(())
        };
        match tokio::time::timeout(DETACH_TIMEOUT, undo).await {
            Ok(Ok(())) => info!(self.log, "pod network detached"),
            Ok(Err(e)) => warn!(self.log, "detaching the pod network"; "error" => %e),
            Err(_) => {
                warn!(self.log, "detaching the pod network timed out"; "after" => ?DETACH_TIMEOUT)
            }
        }
        // The taps' last descriptors close here (the VMM's went with it).
        drop(joined);
    }
}

/// Brings tap `name` up with the pod interface's MTU; returns its index.
async fn tap_up(handle: &rtnetlink::Handle, name: &str, mtu: u32) -> Result<u32, NetworkError> {
    let index = link_index(handle, name)
        .await?
        .ok_or_else(|| NetworkError::Netlink {
            what: format!("tap {name} vanished after it was created"),
            source: rtnetlink::Error::RequestFailed,
        })?;
    handle
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(index)
                .mtu(mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|source| NetworkError::Netlink {
            what: format!("bringing tap {name} up"),
            source,
        })?;
    Ok(index)
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    use futures_util::TryStreamExt;
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(message) => Ok(message.map(|m| m.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(None),
        Err(source) => Err(NetworkError::Netlink {
            what: format!("looking up {name}"),
            source,
        }),
    }
}

async fn delete_link(handle: &rtnetlink::Handle, name: &str) -> Result<(), NetworkError> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(()),
        other => other.map_err(|source| NetworkError::Netlink {
            what: format!("deleting {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
