//! Traffic control that joins a pod interface and its tap (Kata's "tcfilter" model): an
//! ingress qdisc on each, and a filter on each that redirects every frame arriving there out
//! of the other. The pod interface keeps its addresses; the namespace's own stack never sees
//! a frame.

use netlink_packet_route::tc::TcHandle;
use rtnetlink::Handle;

use super::NetworkError;

/// `ffff:`, the ingress qdisc's handle and the parent of its filters.
const INGRESS: u32 = 0xffff_0000;
/// `protocol all`: the ethertype goes into the message in network byte order.
const ETH_P_ALL_NETWORK_ORDER: u16 = 0x0003u16.to_be();
const _: () = assert!(libc::ETH_P_ALL == 0x0003);

/// Redirects each interface's incoming frames out of the other, both ways.
pub async fn join(handle: &Handle, a: u32, b: u32) -> Result<(), NetworkError> {
    for index in [a, b] {
        handle
            .qdisc()
            .add(signed(index)?)
            .ingress()
            .execute()
            .await
            .map_err(netlink("adding an ingress qdisc", index))?;
    }
    for (from, to) in [(a, b), (b, a)] {
        handle
            .traffic_filter(signed(from)?)
            .add()
            .parent(INGRESS)
            .protocol(ETH_P_ALL_NETWORK_ORDER)
            .redirect(to)
            .map_err(netlink("building a redirect filter", from))?
            .execute()
            .await
            .map_err(netlink("adding a redirect filter", from))?;
    }
    Ok(())
}

/// Removes the ingress qdisc of interface `index`, and with it its filters. Gone already
/// (or the interface is) is not an error.
pub async fn unjoin(handle: &Handle, index: u32) -> Result<(), NetworkError> {
    let mut request = handle.qdisc().del(signed(index)?);
    // The kernel needs the qdisc named: parent ffff:fff1, handle ffff:.
    request.message_mut().header.parent = TcHandle::INGRESS;
    request.message_mut().header.handle = TcHandle::from(INGRESS);
    match request.execute().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if [libc::ENOENT, libc::ENODEV, libc::EINVAL].contains(&-e.raw_code()) =>
        {
            Ok(())
        }
        other => other.map_err(netlink("removing an ingress qdisc", index)),
    }
}

fn signed(index: u32) -> Result<i32, NetworkError> {
    i32::try_from(index).map_err(|_| NetworkError::BadIndex(index))
}

fn netlink(what: &'static str, index: u32) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink {
        what: format!("{what} on interface {index}"),
        source,
    }
}
