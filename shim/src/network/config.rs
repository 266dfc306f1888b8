//! What the guest needs to take over a pod interface: plain data read from the pod's
//! network namespace, handed to the VMM (MAC) and the agent (the rest).

use std::net::IpAddr;

/// One interface CNI set up, as the guest must recreate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the pod's namespace (`eth0`); the guest names its NIC the same.
    pub name: String,
    /// The guest NIC's MAC: the CNI interface's own, which the bridge and its neighbours
    /// already know (the tap keeps a MAC of its own).
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Addresses with their prefix length; IPv6 link-local ones are left out (the guest
    /// derives the same one from the same MAC).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through this interface, as the main table holds them, without the
    /// connected routes the kernel derives from the addresses.
    pub routes: Vec<Route>,
    /// Static neighbour entries (some CNI plugins point the default gateway at one).
    pub neighbours: Vec<Neighbour>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None`: the default route of its family.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// The address the guest uses as the source, if the route names one.
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*` (0 universe, 253 link).
    pub scope: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub address: IpAddr,
    pub mac: [u8; 6],
}

impl Interface {
    /// As the agent's `ConfigureNetwork` takes it.
    pub fn to_agent(&self) -> husk_protocol::agent::Interface {
        use husk_protocol::agent as wire;
        let network = |(address, prefix): &(IpAddr, u8)| wire::IpNetwork {
            address: address.to_string(),
            prefix: u32::from(*prefix),
            ..Default::default()
        };
        let text = |ip: &Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        wire::Interface {
            name: self.name.clone(),
            mac: self.mac.to_vec(),
            mtu: self.mtu,
            addresses: self.addresses.iter().map(network).collect(),
            routes: self
                .routes
                .iter()
                .map(|r| wire::Route {
                    destination: r.destination.as_ref().map(network).into(),
                    gateway: text(&r.gateway),
                    source: text(&r.source),
                    scope: u32::from(r.scope),
                    ..Default::default()
                })
                .collect(),
            neighbours: self
                .neighbours
                .iter()
                .map(|n| wire::Neighbour {
                    address: n.address.to_string(),
                    mac: n.mac.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}
