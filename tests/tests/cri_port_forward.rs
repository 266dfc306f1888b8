//! CRI PortForward (what `kubectl port-forward` uses) reaches processes listening in the
//! pod's VM: a port bound on all addresses and one bound only to `127.0.0.1` in the guest,
//! each serving 10 MB through containerd's stream server, and 10 MB uploaded through it,
//! all with matching checksums; a port nobody listens on is an error the client
//! sees. After StopPodSandbox, nothing of husk's is left in the pod's network namespace
//! (the test holds the namespace open, so it outlives containerd's removal of it).

mod cri_common;

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use cri_common::{exec_ok, stop_and_remove_container, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriClient, CriWorld, PortForwardStream};
use sha2::{Digest, Sha256};

/// How long the servers may take to come up once the container runs (a TCG guest is slow).
const SERVE_WITHIN: Duration = Duration::from_secs(30);
const TEN_MB: usize = 10 << 20;
/// httpd on all addresses, httpd on 127.0.0.1 only, an `nc` that stores what it receives.
/// `nc`'s input never ends: at the end of its input it would shut its sending side, and
/// containerd ends a forwarded connection as soon as either direction ends (with runc too).
const SERVERS: &str = "mkdir -p /www && dd if=/dev/urandom of=/www/big bs=1M count=10 2>/dev/null \
     && httpd -p 8080 -h /www && httpd -p 127.0.0.1:8081 -h /www \
     && sleep 1000000 | nc -l -p 8082 > /tmp/up";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The checksum `sha256sum` prints for a file in the container.
fn guest_sha256(c: &CriClient, id: &str, path: &str) -> Result<String> {
    let out = exec_ok(c, id, &["sha256sum", path])?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum {path}: {out:?}"))
}

/// `GET /big` through a PortForward to `port`, retried until the server answers.
fn download(c: &CriClient, pod: &str, port: u16) -> Result<Vec<u8>> {
    let deadline = Instant::now() + SERVE_WITHIN;
    loop {
        let url = c.port_forward(pod, &[i32::from(port)])?;
        let attempt = c.block_on(async {
            let mut s = PortForwardStream::connect(&url, port).await?;
            s.send(b"GET /big HTTP/1.0\r\n\r\n").await?;
            s.read_to_end(TEN_MB + 4096, SERVE_WITHIN).await
        });
        match attempt {
            Ok(reply)
                if reply.starts_with(b"HTTP/1.1 200") || reply.starts_with(b"HTTP/1.0 200") =>
            {
                let body = reply
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|at| reply[at + 4..].to_vec())
                    .context("an HTTP reply without a header end")?;
                return Ok(body);
            }
            other if Instant::now() > deadline => {
                let what =
                    other.map(|r| String::from_utf8_lossy(&r[..r.len().min(200)]).into_owned());
                return Err(anyhow!("port-forward to {port}: {what:?}"));
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// What `cmd` prints, run in the network namespace held open by `netns`.
fn in_netns(netns: &File, cmd: &[&str]) -> Result<String> {
    let netns = netns.try_clone()?;
    let cmd: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
    std::thread::spawn(move || -> Result<String> {
        // The child inherits the namespace of the thread that spawns it.
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output()?;
        ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

fn port_forward_reaches_the_guest(flavour: ContainerdFlavour, name: &str) -> Result<()> {
    let w = CriWorld::start(name, flavour)?;
    let c = w.client();
    let (pod, cfg) = w.run_pod("pf")?;
    let netns_path = w
        .netns_paths()
        .pop()
        .context("the pod has no network namespace")?;
    let netns = File::open(&netns_path).with_context(|| format!("opening {netns_path:?}"))?;
    let servers = w.start_container(&pod, &cfg, "servers", &["sh", "-c", SERVERS])?;

    // Downloads: from a port on all addresses and from one on the guest's loopback only.
    for port in [8080, 8081] {
        let body = download(c, &pod, port)?;
        let expected = guest_sha256(c, &servers, "/www/big")?;
        ensure!(
            body.len() == TEN_MB && sha256_hex(&body) == expected,
            "port {port}: {} bytes with sha256 {}, the file's is {expected}",
            body.len(),
            sha256_hex(&body)
        );
    }
    let listening = exec_ok(c, &servers, &["netstat", "-ltn"])?;
    ensure!(
        listening.contains("127.0.0.1:8081"),
        "httpd is not bound to the guest's loopback only: {listening}"
    );

    // Upload: 10 MB through containerd's stream server to `nc`, which writes what it
    // receives to a file. The stream stays open until the file is complete: closing it ends
    // the forwarded connection at once, whatever is still in flight.
    let data: Vec<u8> = (0..TEN_MB)
        .map(|i| u8::try_from(i * 31 % 251).unwrap_or(0))
        .collect();
    let url = c.port_forward(&pod, &[8082])?;
    let upload = c.block_on(async {
        let mut s = PortForwardStream::connect(&url, 8082).await?;
        s.send(&data).await?;
        anyhow::Ok(s)
    })?;
    let expected = sha256_hex(&data);
    let deadline = Instant::now() + SERVE_WITHIN;
    while guest_sha256(c, &servers, "/tmp/up")? != expected {
        let size = exec_ok(c, &servers, &["wc", "-c", "/tmp/up"])?;
        ensure!(
            Instant::now() < deadline,
            "the uploaded file's checksum never became {expected}; its size: {size}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    c.block_on(upload.close())?;

    // A port nobody listens on: the client is told.
    let url = c.port_forward(&pod, &[8083])?;
    let refused = c.block_on(async {
        let mut s = PortForwardStream::connect(&url, 8083).await?;
        s.send(b"hello").await?;
        s.read_to_end(4096, SERVE_WITHIN).await
    });
    ensure!(
        refused.as_ref().is_err() || refused.as_ref().is_ok_and(Vec::is_empty),
        "port-forward to a closed port returned data: {refused:?}"
    );

    stop_and_remove_container(c, &servers, 2)?;
    stop_and_remove_pod(&w, &pod)?;
    // Nothing of husk's in the namespace: no tap, no traffic-control, no loopback steering.
    let links = in_netns(&netns, &["ip", "-o", "link", "show"])?;
    ensure!(
        !links.contains("husk"),
        "links left in the pod's namespace: {links}"
    );
    let qdiscs = in_netns(&netns, &["tc", "qdisc", "show"])?;
    ensure!(
        !qdiscs.contains("ingress"),
        "qdiscs left in the pod's namespace: {qdiscs}"
    );
    let steered = std::thread::spawn({
        let netns = netns.try_clone()?;
        move || -> Result<std::io::ErrorKind> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            // containerd's loopback plugin leaves `lo` up; bring it up in case it went down.
            let _ = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            let to = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
            match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                Ok(_) => Ok(std::io::ErrorKind::Other),
                Err(e) => Ok(e.kind()),
            }
        }
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))??;
    ensure!(
        steered == std::io::ErrorKind::ConnectionRefused,
        "a loopback connection in the stopped pod's namespace was still taken ({steered:?})"
    );
    drop(netns);
    w.finish()?;
    Ok(())
}

#[test]
fn cri_port_forward_reaches_the_guest() -> Result<()> {
    port_forward_reaches_the_guest(ContainerdFlavour::System, "cri-pf")
}

#[test]
fn cri_port_forward_reaches_the_guest_containerd_2() -> Result<()> {
    port_forward_reaches_the_guest(ContainerdFlavour::V2, "cri-pf2")
}

#[test]
fn cri_port_forward_reaches_the_guest_containerd_2_sandbox_api() -> Result<()> {
    port_forward_reaches_the_guest(ContainerdFlavour::V2SandboxApi, "cri-pf2-sb")
}
