//! Against real network namespaces (the suite runs as root): a pod namespace set up the way
//! CNI's bridge plugin leaves it (a veth with IPv4 and IPv6 addresses, default routes, a
//! static neighbour), its peer in a second namespace standing in for the bridge. Test
//! set-up uses `ip`; the code under test does not.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

const POD_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, command: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(command.split_whitespace())
        .output()
        .unwrap()
}

/// Two namespaces joined by a veth: `pod` (eth0, as CNI leaves it) and `peer`.
struct Namespaces {
    pod: String,
    peer: String,
}

impl Namespaces {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let (pod, peer) = (format!("husk-nt-pod-{tag}"), format!("husk-nt-peer-{tag}"));
        ip(&format!("netns add {pod}"));
        ip(&format!("netns add {peer}"));
        let ns = Self { pod, peer };
        let (pod, peer) = (&ns.pod, &ns.peer);
        ip(&format!(
            "-n {peer} link add veth-peer type veth peer name eth0 netns {pod}"
        ));
        ip(&format!("-n {peer} addr add {PEER_IP}/24 dev veth-peer"));
        ip(&format!(
            "-n {peer} -6 addr add fd77::1/64 dev veth-peer nodad"
        ));
        ip(&format!("-n {peer} link set veth-peer up"));
        ip(&format!(
            "-n {pod} link set eth0 address 02:11:22:33:44:55 mtu 1400 up"
        ));
        ip(&format!("-n {pod} addr add {POD_IP}/24 dev eth0"));
        ip(&format!("-n {pod} -6 addr add fd77::2/64 dev eth0 nodad"));
        ip(&format!("-n {pod} route add default via {PEER_IP}"));
        ip(&format!("-n {pod} -6 route add default via fd77::1"));
        ip(&format!(
            "-n {pod} neigh add 169.254.1.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent"
        ));
        // What the kernel adds by itself (multicast, NOARP) is not carried: no need to wait
        // for it, but make sure one is there.
        ip(&format!(
            "-n {pod} neigh replace ff02::16 lladdr 33:33:00:00:00:16 dev eth0 nud noarp"
        ));
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    fn pod_links(&self) -> String {
        ip(&format!("-n {} -o link show", self.pod))
    }

    fn ingress_filters(&self, dev: &str) -> String {
        let out = in_ns(&self.pod, &format!("tc filter show dev {dev} ingress"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Reads frames from the tap until one satisfies `want`, or the deadline passes.
fn read_frame_until(tap: &OwnedFd, deadline: Instant, mut want: impl FnMut(&[u8]) -> bool) -> bool {
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: reads into `buf`, which is valid for its length, from a descriptor we own.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            // Past the 12-byte virtio-net header.
            Ok(n) if n > 12 && want(&buf[12..n]) => return true,
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

fn is_arp_request_for(frame: &[u8], ip: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 1]
        && frame[38..42] == ip.octets()
}

/// An IPv4 UDP datagram to `ip`.
fn is_udp_to(frame: &[u8], ip: Ipv4Addr) -> bool {
    frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 17
        && frame[30..34] == ip.octets()
}

/// Sends a UDP datagram to `to` every 100 ms for `span`, from inside namespace `ns`.
fn send_udp_from(ns: &str, to: Ipv4Addr, span: Duration) -> std::thread::JoinHandle<()> {
    let netns = std::fs::File::open(PathBuf::from("/run/netns").join(ns)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let end = Instant::now() + span;
        while Instant::now() < end {
            // Unanswered ARP makes sends fail now and then: the next one tries again.
            let _ = socket.send_to(b"husk", (to, 9));
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// An ARP reply from the guest: `POD_IP` is at `POD_MAC`, to the asker.
fn arp_reply(request: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&request[6..12]);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&POD_IP.octets());
    frame.extend_from_slice(&request[22..32]);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_interface_is_read_and_joined_to_a_tap_both_ways() {
    let ns = Namespaces::new();
    let network = PodNetwork::attach(&ns.path(), &log()).await.unwrap();
    let interfaces: Vec<&Interface> = network.interfaces().collect();
    assert_eq!(interfaces.len(), 1, "{interfaces:?}");
    let eth0 = interfaces[0];
    assert_eq!(
        (eth0.name.as_str(), eth0.mac, eth0.mtu),
        ("eth0", POD_MAC, 1400)
    );
    assert_eq!(
        eth0.addresses,
        [(IpAddr::V4(POD_IP), 24), ("fd77::2".parse().unwrap(), 64)],
        "IPv4 and IPv6, no link-local"
    );
    let defaults: Vec<_> = eth0
        .routes
        .iter()
        .filter(|r| r.destination.is_none())
        .map(|r| r.gateway)
        .collect();
    assert_eq!(
        defaults,
        [Some(IpAddr::V4(PEER_IP)), Some("fd77::1".parse().unwrap())]
    );
    assert!(
        eth0.routes.iter().all(|r| r.destination.is_none()),
        "the connected routes are the guest kernel's to make: {:?}",
        eth0.routes
    );
    assert_eq!(
        eth0.neighbours,
        [config::Neighbour {
            address: "169.254.1.1".parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 1]
        }]
    );
    assert!(ns.pod_links().contains("tap0_husk"), "{}", ns.pod_links());
    for dev in ["eth0", "tap0_husk"] {
        let filters = ns.ingress_filters(dev);
        assert!(filters.contains("mirred"), "{dev}: {filters}");
    }

    // The peer's ARP request arrives on the tap; the guest's reply reaches the peer, whose
    // datagrams then come through too.
    let sender = send_udp_from(&ns.peer, POD_IP, Duration::from_secs(4));
    let tap = network.taps().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut request = Vec::new();
    assert!(
        read_frame_until(tap, deadline, |f| {
            let hit = is_arp_request_for(f, POD_IP);
            if hit {
                request = f.to_vec();
            }
            hit
        }),
        "no ARP request for the pod's address reached the tap"
    );
    let reply = arp_reply(&request);
    // SAFETY: writes `reply`, valid for its length, to a descriptor we own.
    let written = unsafe { libc::write(tap.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    assert_eq!(usize::try_from(written).ok(), Some(reply.len()));
    assert!(
        read_frame_until(tap, deadline, |f| is_udp_to(f, POD_IP)),
        "the peer's datagrams never reached the tap: the guest's ARP reply did not get out"
    );
    sender.join().unwrap();

    network.detach().await;
    assert!(!ns.pod_links().contains("tap0_husk"), "{}", ns.pod_links());
    assert!(ns.ingress_filters("eth0").is_empty());
    let qdiscs =
        String::from_utf8_lossy(&in_ns(&ns.pod, "tc qdisc show dev eth0").stdout).into_owned();
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_with_only_loopback_or_down_links_carries_nothing() {
    let ns = Namespaces::new();
    ip(&format!("-n {} link set eth0 down", ns.pod));
    ip(&format!(
        "-n {} link add spare0 type veth peer name spare1",
        ns.pod
    ));
    let network = PodNetwork::attach(&ns.path(), &log()).await.unwrap();
    assert_eq!(network.interfaces().count(), 0);
    assert!(!ns.pod_links().contains("_husk"));
    network.detach().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_namespaces_are_named_at_once() {
    let started = Instant::now();
    let err = PodNetwork::attach(Path::new("/run/netns/husk-no-such-netns"), &log())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("husk-no-such-netns") && err.contains("cannot be opened"),
        "{err}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = PodNetwork::attach(file.path(), &log()).await.err().unwrap();
    assert!(matches!(err, NetworkError::NotANamespace(_)), "{err}");
    // A namespace of another type.
    let err = PodNetwork::attach(Path::new("/proc/self/ns/mnt"), &log())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, NetworkError::Enter(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_husk_cannot_carry_is_named_and_nothing_is_left() {
    let ns = Namespaces::new();
    ip(&format!("-n {} tuntap add tun7 mode tun", ns.pod));
    ip(&format!("-n {} link set tun7 up", ns.pod));
    let err = PodNetwork::attach(&ns.path(), &log()).await.err().unwrap();
    let text = err.to_string();
    assert!(text.contains("tun7") && text.contains("Ethernet"), "{text}");
    assert!(!ns.pod_links().contains("_husk"), "{}", ns.pod_links());
    assert!(ns.ingress_filters("eth0").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_interfaces_than_a_vm_takes_are_refused() {
    let ns = Namespaces::new();
    // eth0 and this many veth pairs inside the namespace: one link more than a VM takes.
    for i in 0..MAX_INTERFACES / 2 {
        ip(&format!(
            "-n {} link add a{i} type veth peer name b{i}",
            ns.pod
        ));
        ip(&format!("-n {} link set a{i} up", ns.pod));
        ip(&format!("-n {} link set b{i} up", ns.pod));
    }
    let err = PodNetwork::attach(&ns.path(), &log()).await.err().unwrap();
    assert!(
        matches!(err, NetworkError::TooMany { count } if count == MAX_INTERFACES + 1),
        "{err}"
    );
    assert!(!ns.pod_links().contains("_husk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_copes_with_a_namespace_that_was_deleted() {
    let ns = Namespaces::new();
    let network = PodNetwork::attach(&ns.path(), &log()).await.unwrap();
    let pod = ns.pod.clone();
    ip(&format!("netns del {pod}"));
    let detached = tokio::time::timeout(Duration::from_secs(15), network.detach()).await;
    assert!(detached.is_ok(), "detach hung");
}
