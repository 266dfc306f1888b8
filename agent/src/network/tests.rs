//! Checking requests, and configuring a real interface in a network namespace of the
//! test's own (the suite runs as root; set-up and checks use `ip`, the code does not).

use std::process::Command;

use husk_protocol::agent::{Interface, IpNetwork, Neighbour, Route};

use super::*;

fn net(address: &str, prefix: u32) -> IpNetwork {
    IpNetwork {
        address: address.into(),
        prefix,
        ..Default::default()
    }
}

fn eth0() -> Interface {
    Interface {
        name: "eth0".into(),
        mac: vec![0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        mtu: 1400,
        addresses: vec![net("10.88.0.2", 24), net("fd88::2", 64)],
        routes: vec![
            Route {
                gateway: "10.88.0.1".into(),
                ..Default::default()
            },
            Route {
                destination: Some(net("192.168.50.0", 24)).into(),
                gateway: "10.88.0.1".into(),
                ..Default::default()
            },
        ],
        neighbours: vec![Neighbour {
            address: "10.88.0.1".into(),
            mac: vec![2, 0, 0, 0, 0, 1],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Spoils one field of a good request.
type Breaker = Box<dyn Fn(&mut Interface)>;

#[test]
fn requests_are_checked_before_anything_changes() {
    let parsed = parse(&[eth0()]).unwrap();
    assert_eq!(parsed[0].addresses[1], ("fd88::2".parse().unwrap(), 64));
    assert_eq!(parsed[0].routes[0].destination, None);
    let cases: Vec<(&str, Breaker)> = vec![
        ("name", Box::new(|i| i.name = "eth0; reboot".into())),
        ("long name", Box::new(|i| i.name = "x".repeat(16))),
        ("mtu", Box::new(|i| i.mtu = 20)),
        ("mac length", Box::new(|i| i.mac = vec![2, 0, 0])),
        ("multicast mac", Box::new(|i| i.mac[0] = 1)),
        (
            "address",
            Box::new(|i| i.addresses[0].address = "10.88.0".into()),
        ),
        ("prefix", Box::new(|i| i.addresses[0].prefix = 33)),
        ("v6 prefix", Box::new(|i| i.addresses[1].prefix = 129)),
        ("gateway", Box::new(|i| i.routes[0].gateway = "gw".into())),
        ("scope", Box::new(|i| i.routes[0].scope = 256)),
        ("neighbour mac", Box::new(|i| i.neighbours[0].mac = vec![])),
    ];
    for (what, break_it) in cases {
        let mut bad = eth0();
        break_it(&mut bad);
        assert!(
            matches!(parse(&[bad]), Err(NetworkError::Invalid(_))),
            "{what} was accepted"
        );
    }
    let many = vec![eth0(); MAX_INTERFACES + 1];
    assert!(parse(&many).is_err());
}

/// `ip -n <ns> <args>`, its output.
fn ip(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
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

/// Runs `configure` in namespace `ns`, on a thread of its own.
fn configure_in(ns: &str, interfaces: Vec<InterfaceConfig>) -> Result<(), NetworkError> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = Logger::root(slog::Discard, slog::o!());
        runtime.block_on(configure(&interfaces, &log))
    })
    .join()
    .unwrap()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_nic_with_the_mac_becomes_the_pod_interface() {
    let ns = Netns(format!("husk-agent-net-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    // The VM's NIC: some name, the MAC the shim asks for, down, nothing configured.
    ip(
        &ns.0,
        "link add enp0s3 address 02:11:22:33:44:55 type veth peer name other",
    );
    ip(&ns.0, "link set other up");
    let wanted = parse(&[eth0()]).unwrap();
    configure_in(&ns.0, wanted.clone()).unwrap();
    let link = ip(&ns.0, "link show eth0");
    assert!(
        link.contains("mtu 1400") && link.contains("02:11:22:33:44:55"),
        "{link}"
    );
    assert!(link.contains(",UP"), "{link}");
    let addresses = ip(&ns.0, "addr show eth0");
    assert!(
        addresses.contains("10.88.0.2/24") && addresses.contains("fd88::2/64"),
        "{addresses}"
    );
    let routes = ip(&ns.0, "route show");
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.50.0/24 via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    let neighbours = ip(&ns.0, "neigh show dev eth0");
    assert!(
        neighbours.contains("10.88.0.1 lladdr 02:00:00:00:00:01 PERMANENT"),
        "{neighbours}"
    );
    assert!(ip(&ns.0, "link show lo").contains(",UP"));
    // A repeated request changes nothing and does not fail.
    configure_in(&ns.0, wanted).unwrap();

    let mut missing = eth0();
    missing.mac = vec![0x02, 0x99, 0, 0, 0, 1];
    let err = configure_in(&ns.0, parse(&[missing]).unwrap()).unwrap_err();
    assert!(
        matches!(err, NetworkError::NoDevice(ref m) if m == "02:99:00:00:00:01"),
        "{err}"
    );
}
