//! The pod network on the nested host, where no CNI runs: a bridge with the host's address,
//! and per pod a namespace with a veth on it, an address and a default route — what CNI's
//! bridge plugin sets up — which the VM then takes over as the shim's does. Also the
//! network measurements of `--net bench`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use husk_tests::PlainNs;
use husk_tests::netperf::{self, Ping, check_count, parse_ping, ping_args};
use husk_tests::plain_ns::ip;

use crate::Args;
use crate::pod::{Backend, Pod};

const BRIDGE: &str = "husk-nbr0";
/// The bridge's (the host's, the pods' gateway) address; pods and plain namespaces get
/// `SUBNET.2`, `.3`, …
const SUBNET: &str = "10.77.0";
const GATEWAY: &str = "10.77.0.1";
const HTTP_PORT: u16 = 80;
const SINK_PORT: u16 = 5001;
/// What the pod's web server serves.
const PAGE: &str = "served-from-inside-the-nested-husk-pod";
/// How long the pod's servers may take to listen.
const SERVE_WITHIN: Duration = Duration::from_secs(60);
/// Bytes per throughput run, runs per path, pings per path. Small: a nested guest under
/// TCG moves a few MiB/s, and the longer it runs loaded the likelier the nested host's
/// sporadic guest crash (issue 11).
const PAYLOAD_MIB: u64 = 8;
const RUNS: usize = 3;
const PINGS: u32 = 20;
/// How long a failed run waits to learn whether a pod's VM ended.
const ENDED_GRACE: Duration = Duration::from_secs(5);
/// Bound on one exec in the client pod (a push at a few MiB/s included).
const EXEC_WITHIN: Duration = Duration::from_secs(180);

/// The bridge, removed on drop.
pub struct Lan;

impl Lan {
    pub fn up() -> Result<Self> {
        // A bridge left by an earlier driver in this host (killed before its drop) goes.
        let _ = ip(&format!("link del {BRIDGE}"));
        ip(&format!("link add {BRIDGE} type bridge"))?;
        let lan = Self;
        ip(&format!("addr add {GATEWAY}/24 dev {BRIDGE}"))?;
        ip(&format!("link set {BRIDGE} up"))?;
        Ok(lan)
    }

    /// Address of host number `n` on the bridge (0 is the first pod's).
    pub fn address(n: u8) -> String {
        format!("{SUBNET}.{}", u16::from(n) + 2)
    }

    /// A namespace as CNI would leave it for a pod: a veth on the bridge with address
    /// `n`, and a default route through the host.
    pub fn pod_namespace(&self, n: u8) -> Result<PlainNs> {
        let ns = self.plain_namespace(n)?;
        ns.add_default_route(GATEWAY)?;
        Ok(ns)
    }

    /// A plain namespace on the bridge with address `n`.
    pub fn plain_namespace(&self, n: u8) -> Result<PlainNs> {
        PlainNs::attach(
            BRIDGE,
            &format!("{}/24", Self::address(n)),
            &format!("nest{n}"),
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&format!("link del {BRIDGE}"));
    }
}

/// The server container of a pod at address `n`: busybox `httpd` serving [`PAGE`], and a
/// counting sink (`wc -c` of each connection, written back to the sender).
fn server_argv() -> Vec<String> {
    let script = format!(
        "mkdir -p /www && echo {PAGE} > /www/index.html && httpd -p {HTTP_PORT} -h /www && \
         exec nc -ll -p {SINK_PORT} -e wc -c"
    );
    ["sh", "-c", &script].map(str::to_owned).to_vec()
}

async fn start_servers(pod: &Pod) -> Result<()> {
    let argv = server_argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    pod.start_container("web", &argv).await
}

/// Starts the pod's servers (the pod has address 0), then fetches the page from the host
/// at the pod's address; how long the successful fetch took.
pub async fn serve_http(pod: &Pod) -> Result<Duration> {
    start_servers(pod).await?;
    let to: SocketAddr = format!("{}:{HTTP_PORT}", Lan::address(0)).parse()?;
    tokio::task::spawn_blocking(move || http_get(to)).await?
}

/// `GET /` until the server answers (within [`SERVE_WITHIN`]); the page must be [`PAGE`].
fn http_get(to: SocketAddr) -> Result<Duration> {
    let fetched = netperf::http_get(to, SERVE_WITHIN)?;
    ensure!(
        fetched.reply.contains(PAGE),
        "{to} answered without the page: {:?}",
        fetched.reply
    );
    Ok(fetched.took)
}

/// One measured path.
struct Path {
    name: &'static str,
    mib_per_s: Vec<f64>,
    ping: Ping,
}

/// `--net bench`: a plain namespace and two pods on the bridge; prints a `NETPATH` line
/// per path as soon as it is measured. The second pod boots only once the host paths are
/// out: two loaded nested guests at once are what most often bring the nested host down,
/// and the host paths should survive that.
pub async fn bench(args: &Args) -> Result<String> {
    let b = Backend::select(args)?;
    let lan = Lan::up()?;
    let namespaces = [lan.pod_namespace(0)?, lan.pod_namespace(1)?];
    let floor = lan.plain_namespace(2)?;
    let sink_port = SINK_PORT.to_string();
    let _floor_sink =
        floor.spawn_busybox(&["nc", "-ll", "-p", &sink_port, "-e", "busybox", "wc", "-c"])?;
    // One state directory per pod: a pod directory's state tmpfs covers its parent, as in
    // the shim (one pod per process).
    let (server_dir, client_dir) = (args.state_dir.join("a"), args.state_dir.join("b"));
    let server = Pod::boot(
        &b,
        &server_dir,
        &format!("{}-a", args.id),
        Some(&namespaces[0].path()),
    )
    .await?;
    let measured = host_paths(&server).await;
    if let Ok(paths) = &measured {
        for p in paths {
            println!("{}", netpath(&b.name, p));
        }
        let client_id = format!("{}-b", args.id);
        match pod_to_pod(&b, &client_dir, &client_id, &namespaces[1]).await {
            Ok(p) => println!("{}", netpath(&b.name, &p)),
            Err(e) => {
                // The client's exec stalls when the serving pod's guest is gone: say so
                // first, the bench's table quotes the start of this line.
                let e = match server.ended(ENDED_GRACE).await {
                    Some(how) => e.context(format!("the serving pod's VM ended: {how}")),
                    None => e,
                };
                eprintln!("nested_pod: pod_to_pod not measured: {e:#}");
                eprintln!(
                    "nested_pod: the serving pod's network:\n{}",
                    net_state(&server, "web", &namespaces[0]).await
                );
            }
        }
    }
    let diagnostics = server.diagnostics();
    server.shutdown().await?;
    measured.map_err(|e| e.context(format!("{}: VMM output: {diagnostics}", b.name)))?;
    for ns in &namespaces {
        let left = ns.husk_leftovers()?;
        ensure!(
            left.is_empty(),
            "husk's devices remain in a pod namespace:\n{left}"
        );
    }
    Ok(String::from("NETDONE"))
}

fn netpath(backend: &str, p: &Path) -> String {
    let rates: Vec<String> = p.mib_per_s.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "NETPATH backend={backend} path={} mib_per_s={} ping_ms={:.3}/{:.3}/{:.3}",
        p.name,
        rates.join(","),
        p.ping.min,
        p.ping.avg,
        p.ping.max
    )
}

/// The floor (host → plain namespace) and host → pod, the pod serving.
async fn host_paths(server: &Pod) -> Result<Vec<Path>> {
    start_servers(server).await?;
    let mut paths = Vec::new();
    for (name, ip) in [("floor", Lan::address(2)), ("host_to_pod", Lan::address(0))] {
        let to: SocketAddr = format!("{ip}:{SINK_PORT}").parse()?;
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let pushed =
                tokio::task::spawn_blocking(move || netperf::push(to, PAYLOAD_MIB)).await??;
            check_count(&pushed.reply, PAYLOAD_MIB).with_context(|| format!("{name} to {to}"))?;
            eprintln!("nested_pod: {name}: {:.2} MiB/s", pushed.mib_per_s);
            rates.push(pushed.mib_per_s);
        }
        let out = Command::new("busybox")
            .args(ping_args(&ip, PINGS))
            .output()?;
        let ping = parse_ping(&String::from_utf8_lossy(&out.stdout))?;
        paths.push(Path {
            name,
            mib_per_s: rates,
            ping,
        });
    }
    Ok(paths)
}

/// Boots the client pod in `ns` (address 1), measures pod → pod to the serving pod
/// (address 0), stops the client pod.
async fn pod_to_pod(
    b: &Backend,
    state_dir: &std::path::Path,
    id: &str,
    ns: &PlainNs,
) -> Result<Path> {
    let client = Pod::boot(b, state_dir, id, Some(&ns.path())).await?;
    let measured = async {
        client.start_container("cli", &["sleep", "1000000"]).await?;
        push_from_pod(&client, &Lan::address(0)).await
    }
    .await;
    if measured.is_err() {
        eprintln!(
            "nested_pod: the client pod's network:\n{}",
            net_state(&client, "cli", ns).await
        );
    }
    let diagnostics = client.diagnostics();
    let ended = client.ended(ENDED_GRACE).await;
    client.shutdown().await?;
    // The cause first: the bench's table quotes the start of this line.
    measured.map_err(|e| match ended {
        Some(how) => anyhow::anyhow!("the client pod's VM ended: {how}; {e:#}"),
        None => anyhow::anyhow!("{e:#}; the client pod's VMM said: {diagnostics}"),
    })
}

/// What tells a stalled path apart, for a failed run: the guest's interface counters,
/// interrupts and TCP sockets (through an exec in container `cid`, if the agent
/// still answers) and the host side's tap and veth counters in the pod's namespace.
async fn net_state(pod: &Pod, cid: &str, ns: &PlainNs) -> String {
    const WITHIN: Duration = Duration::from_secs(30);
    let script = "cat /proc/net/dev; cat /proc/interrupts; netstat -tn";
    let guest = match pod
        .exec(cid, "netstate", &["sh", "-c", script], WITHIN)
        .await
    {
        Ok((_, out)) => out,
        Err(e) => format!("(no answer from the guest: {e:#})"),
    };
    let host = Command::new("ip")
        .args(["-n", ns.name(), "-s", "link"])
        .output()
        .map_or_else(
            |e| format!("(ip -s link: {e})"),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        );
    format!("guest:\n{guest}\nhost side:\n{host}")
}

/// `dd | nc` in the client pod, timed here (the nested guest's clock is not to be trusted
/// under double emulation): the exec's duration minus that of an exec of `true`.
async fn push_from_pod(client: &Pod, server_ip: &str) -> Result<Path> {
    let mut execs = 0u32;
    let mut exec = |argv: Vec<String>| {
        execs += 1;
        let id = format!("x{execs}");
        async move {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let started = Instant::now();
            let (status, out) = client.exec("cli", &id, &argv, EXEC_WITHIN).await?;
            ensure!(status == 0, "{argv:?} exited {status}: {out}");
            anyhow::Ok((started.elapsed(), out))
        }
    };
    let mut overhead = Vec::new();
    for _ in 0..3 {
        overhead.push(exec(vec!["true".into()]).await?.0);
    }
    overhead.sort();
    let overhead = overhead[1];
    let push = format!(
        "dd if=/dev/zero bs=64k count={} 2>/dev/null | nc {server_ip} {SINK_PORT}",
        PAYLOAD_MIB * 16
    );
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let (took, out) = exec(["sh", "-c", &push].map(str::to_owned).to_vec()).await?;
        check_count(&out, PAYLOAD_MIB).context("pod to pod")?;
        let took = took.saturating_sub(overhead).max(Duration::from_millis(1));
        eprintln!("nested_pod: pod_to_pod: {:?} for {PAYLOAD_MIB} MiB", took);
        rates.push(PAYLOAD_MIB as f64 / took.as_secs_f64());
    }
    let (_, out) = exec(ping_args(server_ip, PINGS)).await?;
    Ok(Path {
        name: "pod_to_pod",
        mib_per_s: rates,
        ping: parse_ping(&out)?,
    })
}
