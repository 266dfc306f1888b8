//! The guest's side of the pod network: the shim hands over each interface CNI set up on
//! the host (`ConfigureNetwork`); the agent finds the virtio-net NIC with that interface's
//! MAC, gives it the interface's name and MTU, brings it up with its addresses, then adds
//! its routes and static neighbours. Containers share the VM's network namespace (the
//! shim drops their host namespace paths), so the pod's address then answers from here.
//!
//! Requests are checked before anything changes; every netlink call is bounded.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::TryStreamExt;
use husk_protocol::agent::{Interface, IpNetwork};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use slog::{Logger, info};

/// Bounds on one request: far above any pod, low enough to be cheap to check.
const MAX_INTERFACES: usize = 16;
const MAX_ENTRIES: usize = 256;
/// Linux's IFNAMSIZ less the NUL.
const MAX_NAME: usize = 15;
/// Bound on the whole configuration (netlink answers in microseconds).
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network request: {0}")]
    Invalid(String),
    #[error("no network device with MAC {0} in the VM")]
    NoDevice(String),
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink connection: {0}")]
    Connect(#[source] std::io::Error),
    #[error("configuring the network took longer than {0:?}")]
    Timeout(Duration),
}

/// One checked interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<RouteConfig>,
    pub neighbours: Vec<(IpAddr, [u8; 6])>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub scope: u8,
}

/// Checks a request: names, MACs, MTUs, addresses and prefixes, sizes.
pub fn parse(interfaces: &[Interface]) -> Result<Vec<InterfaceConfig>, NetworkError> {
    let bad = |m: String| NetworkError::Invalid(m);
    if interfaces.len() > MAX_INTERFACES {
        return Err(bad(format!(
            "{} interfaces; at most {MAX_INTERFACES}",
            interfaces.len()
        )));
    }
    interfaces
        .iter()
        .map(|i| {
            let name = i.name.as_str();
            if name.is_empty()
                || name.len() > MAX_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(bad(format!("interface name {name:?}")));
            }
            if !(68..=65535).contains(&i.mtu) {
                return Err(bad(format!("MTU {} of {name}", i.mtu)));
            }
            if i.addresses.len() + i.routes.len() + i.neighbours.len() > MAX_ENTRIES {
                return Err(bad(format!("{name} has more than {MAX_ENTRIES} entries")));
            }
            let routes = i
                .routes
                .iter()
                .map(|r| {
                    Ok(RouteConfig {
                        destination: r.destination.as_ref().map(network).transpose()?,
                        gateway: optional_ip(&r.gateway)?,
                        source: optional_ip(&r.source)?,
                        scope: u8::try_from(r.scope)
                            .map_err(|_| bad(format!("route scope {}", r.scope)))?,
                    })
                })
                .collect::<Result<_, NetworkError>>()?;
            let neighbours = i
                .neighbours
                .iter()
                .map(|n| Ok((ip(&n.address)?, mac(&n.mac)?)))
                .collect::<Result<_, NetworkError>>()?;
            Ok(InterfaceConfig {
                name: name.to_string(),
                mac: unicast(mac(&i.mac)?)?,
                mtu: i.mtu,
                addresses: i.addresses.iter().map(network).collect::<Result<_, _>>()?,
                routes,
                neighbours,
            })
        })
        .collect()
}

fn ip(text: &str) -> Result<IpAddr, NetworkError> {
    text.parse()
        .map_err(|_| NetworkError::Invalid(format!("{text:?} is not an IP address")))
}

fn optional_ip(text: &str) -> Result<Option<IpAddr>, NetworkError> {
    if text.is_empty() {
        Ok(None)
    } else {
        ip(text).map(Some)
    }
}

fn network(n: &IpNetwork) -> Result<(IpAddr, u8), NetworkError> {
    let address = ip(&n.address)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    match u8::try_from(n.prefix) {
        Ok(prefix) if prefix <= max => Ok((address, prefix)),
        _ => Err(NetworkError::Invalid(format!(
            "prefix /{} of {address}",
            n.prefix
        ))),
    }
}

fn mac(bytes: &[u8]) -> Result<[u8; 6], NetworkError> {
    <[u8; 6]>::try_from(bytes)
        .map_err(|_| NetworkError::Invalid(format!("a MAC of {} bytes", bytes.len())))
}

fn unicast(mac: [u8; 6]) -> Result<[u8; 6], NetworkError> {
    if mac[0] & 1 == 1 {
        return Err(NetworkError::Invalid(format!(
            "{} is a multicast MAC",
            mac_text(&mac)
        )));
    }
    Ok(mac)
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Applies `interfaces` to this network namespace.
pub async fn configure(interfaces: &[InterfaceConfig], log: &Logger) -> Result<(), NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    let driver = tokio::spawn(connection);
    let result = tokio::time::timeout(CONFIGURE_TIMEOUT, apply(&handle, interfaces, log)).await;
    driver.abort();
    result.unwrap_or(Err(NetworkError::Timeout(CONFIGURE_TIMEOUT)))
}

async fn apply(
    handle: &Handle,
    interfaces: &[InterfaceConfig],
    log: &Logger,
) -> Result<(), NetworkError> {
    let links = links(handle).await?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        set_link(handle, LinkUnspec::new_with_index(lo.index).up(), "lo").await?;
    }
    let mut indices = Vec::new();
    for i in interfaces {
        let link = links
            .iter()
            .find(|l| l.mac == Some(i.mac))
            .ok_or_else(|| NetworkError::NoDevice(mac_text(&i.mac)))?;
        // A renamed link must be down.
        if link.name != i.name {
            set_link(
                handle,
                LinkUnspec::new_with_index(link.index).down(),
                &i.name,
            )
            .await?;
            set_link(
                handle,
                LinkUnspec::new_with_index(link.index).name(i.name.clone()),
                &i.name,
            )
            .await?;
        }
        for &(address, prefix) in &i.addresses {
            ignore_exists(
                handle
                    .address()
                    .add(link.index, address, prefix)
                    .execute()
                    .await,
            )
            .map_err(netlink(format!("adding {address}/{prefix} to {}", i.name)))?;
        }
        let up = LinkUnspec::new_with_index(link.index).mtu(i.mtu).up();
        set_link(handle, up, &i.name).await?;
        indices.push(link.index);
    }
    // Routes need their gateways reachable: after every interface is up.
    for (i, &index) in interfaces.iter().zip(&indices) {
        for r in &i.routes {
            add_route(handle, index, r).await?;
        }
        for &(address, mac) in &i.neighbours {
            ignore_exists(
                handle
                    .neighbours()
                    .add(index, address)
                    .link_layer_address(&mac)
                    .state(NeighbourState::Permanent)
                    .execute()
                    .await,
            )
            .map_err(netlink(format!("adding neighbour {address} on {}", i.name)))?;
        }
        info!(log, "interface configured"; "name" => &i.name, "mac" => mac_text(&i.mac),
              "addresses" => i.addresses.len(), "routes" => i.routes.len());
    }
    Ok(())
}

async fn add_route(handle: &Handle, index: u32, r: &RouteConfig) -> Result<(), NetworkError> {
    // The builder refuses a route whose addresses mix families.
    let invalid = |e| NetworkError::Invalid(format!("route {r:?}: {e}"));
    let family = r
        .destination
        .map(|(a, _)| a)
        .or(r.gateway)
        .or(r.source)
        .ok_or_else(|| NetworkError::Invalid(format!("route {r:?} names no address")))?;
    let mut builder = RouteMessageBuilder::<IpAddr>::new().output_interface(index);
    builder.get_mut().header.address_family = if family.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    if let Some((address, prefix)) = r.destination {
        builder = builder
            .destination_prefix(address, prefix)
            .map_err(invalid)?;
    }
    if let Some(gateway) = r.gateway {
        builder = builder.gateway(gateway).map_err(invalid)?;
    }
    if let Some(source) = r.source {
        builder = builder.pref_source(source).map_err(invalid)?;
    }
    let message = builder.scope(RouteScope::from(r.scope)).build();
    ignore_exists(handle.route().add(message).execute().await)
        .map_err(netlink(format!("adding route {r:?}")))
}

struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
}

async fn links(handle: &Handle) -> Result<Vec<Link>, NetworkError> {
    let mut links = Vec::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump
        .try_next()
        .await
        .map_err(netlink("listing links".to_string()))?
    {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mac: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => {}
            }
        }
        links.push(link);
    }
    Ok(links)
}

async fn set_link(
    handle: &Handle,
    builder: rtnetlink::LinkMessageBuilder<LinkUnspec>,
    name: &str,
) -> Result<(), NetworkError> {
    handle
        .link()
        .set(builder.build())
        .execute()
        .await
        .map_err(netlink(format!("setting up {name}")))
}

/// An entry that is there already is what was asked for (a repeated request).
fn ignore_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::EEXIST => Ok(()),
        other => other,
    }
}

fn netlink(what: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { what, source }
}

#[cfg(test)]
mod tests;
