//! `net_bench`: the pod network's TCP throughput and ping round-trip time, through CRI and
//! the test's bridge CNI network, next to the same measurements between two plain network
//! namespaces on the same bridge (the floor). `cargo xtask bench` runs it with
//! `HUSK_ARTIFACTS` set and puts the Markdown section it prints on stdout in BENCHMARKS.md.
//!
//! Paths measured, each with busybox `nc` and `ping` on both ends (the same tools for the
//! floor, run in the plain namespaces with the host's busybox):
//! - host → pod: a client in a plain namespace on the bridge to a husk pod;
//! - pod → pod: from one husk pod to another;
//! - floor: from one plain namespace to another.

mod plain;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use husk_tests::cri::{CriClient, CriWorld};
use husk_tests::netperf::{PathFigures, TABLE_HEADER, parse_ping, ping_args};
use husk_tests::{ContainerdFlavour, PlainNs};

/// Bytes sent per throughput run.
const PAYLOAD_MIB: u64 = 64;
/// Throughput runs per path.
const RUNS: usize = 3;
/// Pings per path.
const PINGS: u32 = 20;
const SINK_PORT: u16 = 5001;
/// The sink: one `wc -c` per connection, run by `nc` with the connection as its input (so
/// the sink reads until the sender's end of stream), appending the byte count to a file;
/// a run counts only if all of the payload arrived.
/// `busybox`: how the sink's programs are named (`""` in the pod, where the applets are on
/// `PATH`; `"busybox"` on the host).
fn sink(busybox: &str, counts: &str) -> Vec<String> {
    let applet = |name: &str| format!("{busybox} {name}").trim().to_owned();
    let port = SINK_PORT.to_string();
    let mut args = vec![
        "nc".to_owned(),
        "-ll".into(),
        "-p".into(),
        port,
        "-e".into(),
    ];
    if !busybox.is_empty() {
        args.push(busybox.to_owned());
    }
    args.extend([
        "sh".into(),
        "-c".into(),
        format!("{} >> {counts}", applet("wc -c")),
    ]);
    args
}
/// Where the pod's sink counts.
const POD_COUNTS: &str = "/tmp/sunk";

fn main() -> Result<()> {
    let w = CriWorld::start("bench-net", ContainerdFlavour::System)?;
    // On failure the world is dropped unfinished, which cleans up what the run left.
    let figures = measure(&w)?;
    w.finish()?;
    print!("{}", report(&figures));
    Ok(())
}

fn measure(w: &CriWorld) -> Result<Vec<PathFigures>> {
    let c = w.client();
    let (server_pod, server_cfg) = w.run_pod("net-server")?;
    let pod_sink = sink("", POD_COUNTS);
    let pod_sink: Vec<&str> = pod_sink.iter().map(String::as_str).collect();
    let server = w.start_container(&server_pod, &server_cfg, "sink", &pod_sink)?;
    let (client_pod, client_cfg) = w.run_pod("net-client")?;
    let client = w.start_container(&client_pod, &client_cfg, "client", &["sleep", "100000"])?;
    let server_ip = pod_ip(c, &server_pod)?;

    let subnet = w.network().subnet();
    let host = PlainNs::attach(
        w.network().bridge(),
        &subnet.replace("0/24", "240/24"),
        "bh",
    )?;
    let floor = PlainNs::attach(
        w.network().bridge(),
        &subnet.replace("0/24", "241/24"),
        "bf",
    )?;
    let floor_ip = subnet.replace("0/24", "241");
    let floor_counts = std::env::temp_dir().join(format!("husk-nb-sunk-{}", std::process::id()));
    let floor_counts_text = floor_counts.display().to_string();
    let _floor_sink = floor.spawn_busybox(&sink("busybox", &floor_counts_text))?;
    let floor_lines = || -> Result<Vec<String>> {
        let text = std::fs::read_to_string(&floor_counts).unwrap_or_default();
        Ok(text.lines().map(str::to_owned).collect())
    };
    let pod_lines = || -> Result<Vec<String>> {
        let out = exec(
            c,
            &server,
            &["sh", "-c", &format!("cat {POD_COUNTS} 2>/dev/null || true")],
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    };

    let ping = |to: &str| ping_args(to, PINGS);
    let figures = vec![
        PathFigures {
            what: "floor: plain namespace → plain namespace".into(),
            mib_per_s: runs(|| {
                counted(&floor_lines, || {
                    plain::push(&host, &floor_ip, SINK_PORT, PAYLOAD_MIB)
                })
            })?,
            ping: parse_ping(&host.busybox(&ping(&floor_ip))?)?,
        },
        PathFigures {
            what: "host (plain namespace) → husk pod".into(),
            mib_per_s: runs(|| {
                counted(&pod_lines, || {
                    plain::push(&host, &server_ip, SINK_PORT, PAYLOAD_MIB)
                })
            })?,
            ping: parse_ping(&host.busybox(&ping(&server_ip))?)?,
        },
        PathFigures {
            what: "husk pod → husk pod".into(),
            mib_per_s: runs(|| counted(&pod_lines, || pod_push(c, &client, &server_ip)))?,
            ping: parse_ping(&exec(c, &client, &ping(&server_ip))?)?,
        },
    ];
    for (id, pod) in [(&client, &client_pod), (&server, &server_pod)] {
        c.stop_container(id, 2)?;
        c.remove_container(id)?;
        c.stop_pod_sandbox(pod)?;
        c.remove_pod_sandbox(pod)?;
    }
    let _ = std::fs::remove_file(&floor_counts);
    Ok(figures)
}

/// Runs `push` and checks that the sink (whose counts `lines` reads) got the whole payload.
fn counted(
    lines: &dyn Fn() -> Result<Vec<String>>,
    push: impl FnOnce() -> Result<f64>,
) -> Result<f64> {
    let before = lines()?.len();
    let rate = push()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = lines()?;
        if now.len() > before {
            let got: u64 = now[before].trim().parse().unwrap_or_default();
            ensure!(
                got == PAYLOAD_MIB << 20,
                "the sink got {got} bytes of {}",
                PAYLOAD_MIB << 20
            );
            return Ok(rate);
        }
        ensure!(Instant::now() < deadline, "the sink never reported the run");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn runs(mut one: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    (0..RUNS).map(|_| one()).collect()
}

/// `dd | nc` inside a pod, timed on the host (a TCG guest's clock drifts): the ExecSync's
/// duration minus that of an ExecSync of `true`, the exec path's own cost.
fn pod_push(c: &CriClient, id: &str, to: &str) -> Result<f64> {
    let script = format!(
        "dd if=/dev/zero bs=64k count={} 2>/dev/null | nc {to} {SINK_PORT}",
        PAYLOAD_MIB * 16
    );
    let mut overhead = (0..3)
        .map(|_| {
            let started = Instant::now();
            exec(c, id, &["true"]).map(|_| started.elapsed())
        })
        .collect::<Result<Vec<_>>>()?;
    overhead.sort();
    let overhead = overhead[1];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let out = exec(c, id, &["sh", "-c", &script]);
        let took = started.elapsed().saturating_sub(overhead);
        if out.is_ok() && !took.is_zero() {
            return Ok(PAYLOAD_MIB as f64 / took.as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("pushing from the pod never worked: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn exec<S: AsRef<str>>(c: &CriClient, id: &str, cmd: &[S]) -> Result<String> {
    let cmd: Vec<&str> = cmd.iter().map(AsRef::as_ref).collect();
    let out = c.exec_sync(id, &cmd, 120)?;
    ensure!(
        out.exit_code == 0,
        "{cmd:?} exited {}: {}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_ip(c: &CriClient, pod: &str) -> Result<String> {
    c.pod_sandbox_status(pod, false)?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("PodSandboxStatus without a network")
}

fn report(figures: &[PathFigures]) -> String {
    let mut out = format!("## Pod network (CRI, bridge CNI, QEMU/TCG)\n\n{TABLE_HEADER}\n");
    for f in figures {
        out.push_str(&f.row());
        out.push('\n');
    }
    out.push_str(&format!(
        "\nMethod: `net_bench` (run by `cargo xtask bench`): a private containerd 1.6 with CRI and the test's bridge + host-local CNI network; two husk pods, one running a busybox sink on port {SINK_PORT} (`nc -ll -e sh -c 'wc -c >> counts'`: each connection is read to its end and its byte count noted; a run counts only if the whole payload arrived); two plain network namespaces on the same bridge, one running the same sink with the host's busybox. Throughput: {PAYLOAD_MIB} MiB pushed with `nc` (from the host: a Rust client, connect until the sink closes; from a pod: `dd | nc` in an ExecSync, timed on the host minus an ExecSync of `true`), {RUNS} runs. RTT: busybox `ping -c {PINGS} -i 0.2`.\n"
    ));
    out
}
