//! Reading what CNI set up in the pod's namespace: its links, and for each the addresses,
//! routes and static neighbours the guest must recreate ([`super::config`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetworkError;
use super::config::{Interface, Neighbour, Route};

/// A link of the pod's namespace.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub ethernet: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `link/<type>` as `ip link` would say, for errors.
    pub kind: String,
}

fn netlink(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetworkError + '_ {
    move |source| NetworkError::Netlink {
        what: what.to_string(),
        source,
    }
}

/// Every link but loopback.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetworkError> {
    let mut links = Vec::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump.try_next().await.map_err(netlink("listing links"))? {
        let link = link_of(&message);
        if message.header.link_layer_type != LinkLayerType::Loopback {
            links.push(link);
        }
    }
    Ok(links)
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        up: message.header.flags.contains(LinkFlags::Up),
        ethernet: message.header.link_layer_type == LinkLayerType::Ether,
        mac: None,
        mtu: 0,
        kind: format!("{:?}", message.header.link_layer_type).to_lowercase(),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => {}
        }
    }
    link
}

/// What the guest needs of `link`.
pub async fn interface(
    handle: &Handle,
    link: &Link,
    mac: [u8; 6],
) -> Result<Interface, NetworkError> {
    Ok(Interface {
        name: link.name.clone(),
        mac,
        mtu: link.mtu,
        addresses: addresses(handle, link.index).await?,
        routes: routes(handle, link.index).await?,
        neighbours: neighbours(handle, link.index).await?,
    })
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, NetworkError> {
    let mut addresses = Vec::new();
    let mut dump = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(message) = dump
        .try_next()
        .await
        .map_err(netlink("listing addresses"))?
    {
        for attribute in &message.attributes {
            // IFA_ADDRESS (IFA_LOCAL differs only on point-to-point links, not carried).
            if let AddressAttribute::Address(ip) = attribute {
                if !is_link_local(ip) {
                    addresses.push((*ip, message.header.prefix_len));
                }
            }
        }
    }
    Ok(addresses)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
        IpAddr::V4(_) => false,
    }
}

async fn routes(handle: &Handle, index: u32) -> Result<Vec<Route>, NetworkError> {
    let mut routes = Vec::new();
    for request in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut dump = handle.route().get(request).execute();
        while let Some(message) = dump.try_next().await.map_err(netlink("listing routes"))? {
            if let Some(route) = route_of(&message, index) {
                routes.push(route);
            }
        }
    }
    Ok(routes)
}

/// The route if it belongs in the guest: main table, through link `index`, not one the
/// kernel derives from an address (the guest kernel derives it again), not link-local.
fn route_of(message: &RouteMessage, index: u32) -> Option<Route> {
    let header = &message.header;
    if header.table != RouteHeader::RT_TABLE_MAIN || header.protocol == RouteProtocol::Kernel {
        return None;
    }
    let mut route = Route {
        destination: None,
        gateway: None,
        source: None,
        scope: header.scope.into(),
    };
    let mut through = false;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(d) => {
                route.destination = ip_of(d).map(|ip| (ip, header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => route.source = ip_of(s),
            RouteAttribute::Oif(oif) => through = *oif == index,
            _ => {}
        }
    }
    let link_local = route.destination.is_some_and(|(ip, _)| is_link_local(&ip));
    (through && !link_local).then_some(route)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Static unicast entries only: learned ones are learned again in the guest.
async fn neighbours(handle: &Handle, index: u32) -> Result<Vec<Neighbour>, NetworkError> {
    let mut neighbours = Vec::new();
    let mut dump = handle.neighbours().get().execute();
    while let Some(message) = dump
        .try_next()
        .await
        .map_err(netlink("listing neighbours"))?
    {
        let state = message.header.state;
        if message.header.ifindex != index
            || !matches!(state, NeighbourState::Permanent | NeighbourState::Noarp)
        {
            continue;
        }
        let (mut address, mut mac) = (None, None);
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    address = Some(IpAddr::V4(*v4));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    address = Some(IpAddr::V6(*v6));
                }
                NeighbourAttribute::LinkLayerAddress(ll) => {
                    mac = <[u8; 6]>::try_from(ll.as_slice()).ok();
                }
                _ => {}
            }
        }
        // Multicast entries (the kernel's own NOARP ones for MLD and the like) are the
        // guest kernel's to make.
        if let (Some(address), Some(mac)) = (address, mac) {
            if !address.is_multicast() && mac[0] & 1 == 0 {
                neighbours.push(Neighbour { address, mac });
            }
        }
    }
    Ok(neighbours)
}
