//! Pod networking through CRI: the pod's CNI address answers from inside the VM. A busybox
//! `httpd` in a husk pod serves HTTP at the pod IP to a client in a plain network namespace
//! on the same bridge; the container sees the pod's interface with both its addresses
//! (the test network is dual-stack) and answers over IPv6 too; two husk
//! pods reach each other, and a pod reaches a server in a plain namespace; the pod's DNS
//! settings and hostname reach its containers; a hostPort mapping (`portmap`) reaches a pod
//! from the host.

mod cri_common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;
use husk_tests::netperf;
use husk_tests::plain_ns::{PlainNs, ip};
use k8s_cri::v1::{DnsConfig, PortMapping, Protocol};

/// How long httpd may take to answer once its container runs (a TCG guest is slow).
const SERVE_WITHIN: Duration = Duration::from_secs(30);
const PAGE: &str = "husk-net-ok";

/// A plain network namespace on the test's bridge: a host on the pod network.
struct Client {
    ns: PlainNs,
}

impl Client {
    fn attach(bridge: &str, address: &str, tag: &str) -> Result<Self> {
        Ok(Self {
            ns: PlainNs::attach(bridge, address, tag)?,
        })
    }

    /// Answers one HTTP request on `port` from inside the client's namespace with `body`.
    fn serve_once(
        &self,
        port: u16,
        body: &'static str,
    ) -> Result<std::thread::JoinHandle<Result<()>>> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = self.ns.run_in(move || -> Result<()> {
            let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
            listener.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + SERVE_WITHIN;
            loop {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        let mut request = [0u8; 1024];
                        let _ = s.read(&mut request)?;
                        write!(
                            s,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )?;
                        return Ok(());
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(anyhow!("serving on port {port}: {e}")),
                }
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the plain namespace's server did not start"))?;
        Ok(server)
    }

    /// `GET /` from inside the client's namespace, retried until `SERVE_WITHIN`.
    fn get(&self, to: std::net::IpAddr) -> Result<String> {
        self.ns.run(move || get_http(SocketAddr::from((to, 80))))
    }
}

#[test]
fn cri_pod_ip_answers_http_from_inside_the_vm() -> Result<()> {
    cri_pod_ip_answers_http_from_inside_the_vm_on(ContainerdFlavour::System, "cri-net-http")
}

#[test]
fn cri_pod_ip_answers_http_from_inside_the_vm_sandbox_api() -> Result<()> {
    cri_pod_ip_answers_http_from_inside_the_vm_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-net-http-sb",
    )
}

fn cri_pod_ip_answers_http_from_inside_the_vm_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("web")?;
    let status = c.pod_sandbox_status(&pod, false)?;
    let pod_ip: Ipv4Addr = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("PodSandboxStatus without a network")?
        .parse()
        .context("the pod's IP")?;
    let script =
        format!("mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www");
    let web = w.start_container(&pod, &cfg, "httpd", &["sh", "-c", &script])?;

    // The pod's interface is in the guest, with both CNI addresses (dual stack).
    let pod_ip6 = c
        .pod_sandbox_status(&pod, false)?
        .status
        .and_then(|s| s.network)
        .and_then(|n| n.additional_ips.first().map(|a| a.ip.clone()))
        .context("the dual-stack pod has no second (IPv6) address")?;
    ensure!(
        pod_ip6.parse::<std::net::Ipv6Addr>().is_ok(),
        "the pod's second address {pod_ip6:?} is not IPv6"
    );
    let addresses = exec_ok(c, &web, &["ip", "-o", "addr", "show", "eth0"])?;
    ensure!(
        addresses.contains(&format!("inet {pod_ip}/24"))
            && addresses.contains(&format!("inet6 {pod_ip6}/64")),
        "the guest's eth0 lacks the pod's addresses {pod_ip} and {pod_ip6}: {addresses}"
    );

    let subnet = w.network().subnet();
    let client_ip = subnet.replace("0/24", "250/24");
    let client = Client::attach(w.network().bridge(), &client_ip, &pod[..12])?;
    let reply = client.get(pod_ip.into())?;
    ensure!(
        reply.starts_with("HTTP/1.") && reply.contains(PAGE),
        "HTTP from the pod at {pod_ip}: {reply:?}"
    );
    // And over IPv6, from the client's address in the network's IPv6 range.
    let client_ip6 = w.network().subnet6().replace("::/64", "::fa/64");
    client.ns.add_ipv6(&client_ip6)?;
    let pod_ip6: std::net::Ipv6Addr = pod_ip6.parse()?;
    let reply = client.get(pod_ip6.into())?;
    ensure!(
        reply.starts_with("HTTP/1.") && reply.contains(PAGE),
        "HTTP from the pod at [{pod_ip6}]: {reply:?}"
    );
    drop(client);

    stop_and_remove_container(c, &web, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

/// `GET /` from a container with busybox `nc` (busybox-static's `wget` needs NSS files the
/// image lacks), retried: the other side may still be coming up.
fn fetch(c: &husk_tests::cri::CriClient, id: &str, ip: &str, port: u16) -> Result<String> {
    let deadline = Instant::now() + SERVE_WITHIN;
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    loop {
        let out = c.exec_sync(id, &["sh", "-c", &script], 10)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == 0 && text.starts_with("HTTP/1.") {
            return Ok(text);
        }
        ensure!(
            Instant::now() < deadline,
            "GET http://{ip}:{port}/: exit {}: {text:?} {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pod_ip(c: &husk_tests::cri::CriClient, pod: &str) -> Result<Ipv4Addr> {
    c.pod_sandbox_status(pod, false)?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("PodSandboxStatus without a network")?
        .parse()
        .context("the pod's IP")
}

#[test]
fn cri_pods_reach_each_other_and_the_bridge_containerd_2() -> Result<()> {
    cri_pods_reach_each_other_and_the_bridge_containerd_2_on(ContainerdFlavour::V2, "cri-net-pods")
}

#[test]
fn cri_pods_reach_each_other_and_the_bridge_containerd_2_sandbox_api() -> Result<()> {
    cri_pods_reach_each_other_and_the_bridge_containerd_2_on(
        ContainerdFlavour::V2SandboxApi,
        "cri-net-pods-sb",
    )
}

fn cri_pods_reach_each_other_and_the_bridge_containerd_2_on(
    flavour: ContainerdFlavour,
    name: &str,
) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (server_pod, server_cfg) = w.run_pod("server")?;
    let script =
        format!("mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www");
    let server = w.start_container(&server_pod, &server_cfg, "httpd", &["sh", "-c", &script])?;
    let mut client_cfg = w.pod_config("client")?;
    client_cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["husk.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let client_pod = w.run_pod_with(&client_cfg)?;
    let client = w.start_container(&client_pod, &client_cfg, "client", &["sleep", "1000000"])?;

    // Pod to pod, through the bridge.
    let server_ip = pod_ip(c, &server_pod)?;
    let page = fetch(c, &client, &server_ip.to_string(), 80)?;
    ensure!(page.contains(PAGE), "pod to pod: {page:?}");

    // Pod to a plain namespace on the same bridge.
    let plain_ip = w.network().subnet().replace("0/24", "251");
    let plain = Client::attach(
        w.network().bridge(),
        &format!("{plain_ip}/24"),
        &client_pod[..12],
    )?;
    let served = plain.serve_once(8080, "from-the-bridge")?;
    let page = fetch(c, &client, &plain_ip, 8080)?;
    ensure!(
        page.contains("from-the-bridge"),
        "pod to plain namespace: {page:?}"
    );
    served
        .join()
        .map_err(|_| anyhow!("the server thread panicked"))??;
    drop(plain);

    // DNS settings and hostname, as CRI wrote them for the pod.
    let resolv = exec_ok(c, &client, &["cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search husk.svc.cluster.local")
            && resolv.contains("options ndots:5"),
        "/etc/resolv.conf in the pod: {resolv:?}"
    );
    let hostname = exec_ok(c, &client, &["hostname"])?;
    ensure!(
        hostname.trim() == "client",
        "hostname in the pod: {hostname:?}"
    );

    for (id, pod) in [(&client, &client_pod), (&server, &server_pod)] {
        stop_and_remove_container(c, id, 2)?;
        stop_and_remove_pod(&w, pod)?;
    }
    w.finish()?;
    Ok(())
}

/// `GET /` from the calling thread's namespace, retried until `SERVE_WITHIN`.
fn get_http(address: SocketAddr) -> Result<String> {
    netperf::http_get(address, SERVE_WITHIN).map(|f| f.reply)
}

/// A pod's hostPort mapping (CNI `portmap`) reaches httpd in its VM from the host, at the
/// node's address on the pod network and at `127.0.0.1`; the NAT rules go with the pod
/// (the world's leak check looks for them).
fn host_port_reaches_the_pod(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    // A port free on this host now; portmap claims it for the pod.
    let host_port = std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port();
    let mut cfg = w.pod_config("hostport")?;
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: i32::from(host_port),
        host_ip: String::new(),
    }];
    // The node's own address on the pod network, as a bridge with `isGateway` has it, in
    // place before the pod's CNI ADD (portmap looks for the host interface routing to the
    // pod then, to let `127.0.0.1` reach it).
    let (bridge, gateway) = (w.network().bridge(), w.network().gateway());
    ip(&format!("link add {bridge} type bridge"))?;
    ip(&format!("addr add {gateway}/24 dev {bridge}"))?;
    ip(&format!("link set {bridge} up"))?;
    let gateway: Ipv4Addr = gateway.parse()?;
    let pod = w.run_pod_with(&cfg)?;
    let script =
        format!("mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www");
    let web = w.start_container(&pod, &cfg, "httpd", &["sh", "-c", &script])?;

    for to in [gateway, Ipv4Addr::LOCALHOST] {
        let reply = get_http(SocketAddr::from((to, host_port)))?;
        ensure!(
            reply.contains(PAGE),
            "hostPort {host_port} at {to}: {reply:?}"
        );
    }

    stop_and_remove_container(c, &web, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}

#[test]
fn cri_host_port_reaches_the_pod() -> Result<()> {
    host_port_reaches_the_pod(ContainerdFlavour::System, "cri-net-hp")
}

#[test]
fn cri_host_port_reaches_the_pod_containerd_2() -> Result<()> {
    host_port_reaches_the_pod(ContainerdFlavour::V2, "cri-net-hp2")
}

#[test]
fn cri_host_port_reaches_the_pod_containerd_2_sandbox_api() -> Result<()> {
    host_port_reaches_the_pod(ContainerdFlavour::V2SandboxApi, "cri-net-hp2-sb")
}
