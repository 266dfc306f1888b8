//! Pod networking through CRI: the pod's CNI address answers from inside the VM. A busybox
//! `httpd` in a husk pod serves HTTP at the pod IP to a client in a plain network namespace
//! on the same bridge; the container sees the pod's interface with its address.

mod cri_common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::CriWorld;

/// How long httpd may take to answer once its container runs (a TCG guest is slow).
const SERVE_WITHIN: Duration = Duration::from_secs(30);
const PAGE: &str = "husk-net-ok";

/// A plain network namespace with a veth on the test's bridge: a host on the pod network.
struct Client {
    netns: String,
}

impl Client {
    fn attach(bridge: &str, address: &str, tag: &str) -> Result<Self> {
        let netns = format!("husk-cli-{tag}");
        let host_end = format!("hc{}", &tag[tag.len().saturating_sub(8)..]);
        let client = Self { netns };
        let ns = client.netns.as_str();
        for args in [
            format!("netns add {ns}"),
            format!("link add {host_end} type veth peer name eth0 netns {ns}"),
            format!("link set {host_end} master {bridge} up"),
            format!("-n {ns} addr add {address} dev eth0"),
            format!("-n {ns} link set eth0 up"),
            format!("-n {ns} link set lo up"),
        ] {
            ip(&args)?;
        }
        Ok(client)
    }

    /// `GET /` from inside the client's namespace, retried until `SERVE_WITHIN`.
    fn get(&self, to: Ipv4Addr) -> Result<String> {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.netns))?;
        std::thread::spawn(move || -> Result<String> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let deadline = Instant::now() + SERVE_WITHIN;
            let address = SocketAddr::from((to, 80));
            loop {
                let attempt = || -> std::io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut reply = String::new();
                    s.take(1 << 20).read_to_string(&mut reply)?;
                    Ok(reply)
                };
                match attempt() {
                    Ok(reply) => return Ok(reply),
                    Err(e) if Instant::now() > deadline => {
                        return Err(anyhow!("no HTTP answer from {address}: {e}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        })
        .join()
        .map_err(|_| anyhow!("the client thread panicked"))?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn ip(args: &str) -> Result<()> {
    let out = Command::new("ip").args(args.split_whitespace()).output()?;
    ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn cri_pod_ip_answers_http_from_inside_the_vm() -> Result<()> {
    let w = CriWorld::start("cri-net-http", ContainerdFlavour::System)?;
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

    // The pod's interface is in the guest, with the CNI address.
    let addresses = exec_ok(c, &web, &["ip", "-o", "addr", "show", "eth0"])?;
    ensure!(
        addresses.contains(&format!("inet {pod_ip}/24")),
        "the guest's eth0 does not have the pod's address {pod_ip}: {addresses}"
    );

    let subnet = w.network().subnet();
    let client_ip = subnet.replace("0/24", "250/24");
    let client = Client::attach(w.network().bridge(), &client_ip, &pod[..12])?;
    let reply = client.get(pod_ip)?;
    ensure!(
        reply.starts_with("HTTP/1.") && reply.contains(PAGE),
        "HTTP from the pod at {pod_ip}: {reply:?}"
    );
    drop(client);

    stop_and_remove_container(c, &web, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    w.finish()?;
    Ok(())
}
