//! `cargo xtask bench`: husk's speed and memory numbers, measured on this machine in one run
//! and written to BENCHMARKS.md with the method used.
//!
//! - `ctr run` to the container's first output byte, husk next to runc;
//! - a bare QEMU boot of the same kernel and initramfs to the agent's first console line
//!   (the floor husk's start-up time sits on);
//! - host memory (PSS, so shared pages are split fairly) of one idle pod: shim + VMM +
//!   virtiofsd;
//! - the pod network's TCP throughput and ping RTT next to two plain namespaces (CRI);
//! - a pod's start through CRI with a pause container and with husk's Sandbox API;
//! - density (idle pods until a count or memory bound) and ten pods started at once;
//! - IO: stdout throughput (husk, runc), agent RPC round trip, virtio-fs throughput;
//! - husk's built-in monitor next to QEMU/KVM, both under nested KVM.

mod driver;
mod goals;
mod io;
mod nested;
mod network;
mod phases;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use husk_tests::nested::smaps;
use husk_tests::procfs::{USER_HZ, cpu_ticks, snapshot};
use husk_tests::{
    Artifacts, BusyboxImage, Containerd, Ctr, HUSK_RUNTIME, LeakScope, RUNC_RUNTIME, TestScope,
};

use super::build;
use crate::ui::{note, step};
use crate::workspace::Workspace;

const NAMESPACE: &str = "husk-bench";
const RUNS: usize = 5;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The agent's first console line.
const AGENT_MARKER: &str = "agent starting";
/// Twelve pods under TCG, two containerd starts.
const POD_START_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Up to 100 idle pods under TCG, started and removed one by one, plus ten at once.
const DENSITY_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// How long an idle pod settles before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

pub fn run(ws: &Workspace) -> Result<()> {
    let artifacts = build::with_nested_host(ws)?;
    let mut scope = TestScope::new("bench").context("creating the bench directory")?;
    let mut containerd = super::husk_containerd(&scope, &artifacts)?;
    let leftovers = LeakScope::new(scope.tag(), NAMESPACE, containerd.address(), 0);
    let result = measure(ws, &artifacts, &containerd, &scope);
    // Shims exit just after their last container is deleted; give them that moment.
    let _ = leftovers.wait_clean(&[], Duration::from_secs(3));
    containerd.stop()?;
    for p in leftovers.kill_attributed() {
        note(format!("killed leftover {p}"));
    }
    scope.cleanup()?;
    // runc's and husk's containers sat under `/husk-bench/<id>`: containerd creates the
    // namespace's own cgroup directories and leaves them behind, empty.
    for (dir, e) in husk_tests::namespace_cgroups::remove(NAMESPACE) {
        note(format!("cgroup {} is still in use: {e}", dir.display()));
    }
    let mut report = result?;
    report.push('\n');
    report.push_str(&network::section(ws, &artifacts)?);
    report.push('\n');
    step("pod start through CRI: pause container and Sandbox API (containerd 2.x)");
    report.push_str(&driver::run(
        ws,
        &artifacts,
        "pod_start_bench",
        POD_START_TIMEOUT,
    )?);
    report.push('\n');
    step("density: idle pods until 100 or the memory reserve; 10 pods started at once (CRI)");
    report.push_str(&driver::run(
        ws,
        &artifacts,
        "density_bench",
        DENSITY_TIMEOUT,
    )?);
    report.push('\n');
    report.push_str(&nested::section(ws, &artifacts)?);
    let goals = goals::section(&report);
    if let Some(at) = report.find("## Start-up") {
        report.insert_str(at, &format!("{goals}\n"));
    }
    let path = ws.root.join("BENCHMARKS.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    step(format!("wrote {}", path.display()));
    Ok(())
}

struct Samples(Vec<Duration>);

impl Samples {
    fn row(&self, what: &str) -> String {
        let mut v = self.0.clone();
        v.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let median = v.get(v.len() / 2).map(ms).unwrap_or_default();
        let (min, max) = (
            v.first().map(ms).unwrap_or_default(),
            v.last().map(ms).unwrap_or_default(),
        );
        format!(
            "| {what} | {median:.0} ms | {min:.0}–{max:.0} ms | {} |\n",
            v.len()
        )
    }
}

fn measure(
    ws: &Workspace,
    artifacts: &Artifacts,
    containerd: &Containerd,
    scope: &TestScope,
) -> Result<String> {
    let image = BusyboxImage::ensure(&ws.cache)?;
    let ctr = Ctr::new(containerd.address(), NAMESPACE, RUN_TIMEOUT);
    ctr.import(&image.archive, &image.reference)?;

    step("bare QEMU boot of the husk kernel + initramfs to the agent's first line");
    let bare = Samples(
        (0..RUNS)
            .map(|_| bare_boot(artifacts))
            .collect::<Result<_>>()?,
    );
    step("ctr run --rm ... echo: time to the first output byte and to exit");
    let mut husk_first = Vec::new();
    let mut husk_total = Vec::new();
    let mut runc_first = Vec::new();
    let mut runc_total = Vec::new();
    let mut husk_phases = Vec::new();
    for i in 0..RUNS {
        // Alternate runtimes so machine load drifts affect both alike.
        let id = scope.id(&format!("h{i}"));
        let run = first_byte(containerd.address(), HUSK_RUNTIME, &image.reference, &id)?;
        husk_first.push(run.first);
        husk_total.push(run.total);
        let log = std::fs::read_to_string(containerd.log()).context("reading containerd's log")?;
        husk_phases.push(phases::Run {
            spawned: run.spawned,
            first_byte: run.first_at,
            shim: phases::find(&log, &id)?,
        });
        let run = first_byte(
            containerd.address(),
            RUNC_RUNTIME,
            &image.reference,
            &scope.id(&format!("r{i}")),
        )?;
        runc_first.push(run.first);
        runc_total.push(run.total);
    }
    step("memory and CPU of one idle pod");
    let idle = idle_pod(&ctr, &image.reference, &scope.id("idle"))?;
    step(
        "IO: stdout through ctr (husk, runc); agent RPC, stdout stream, virtio-fs (nested_pod --io)",
    );
    let ctr_io = io::ctr_stdout(containerd.address(), &image.reference, scope)?;
    let agent_io = io::agent_level(ws, artifacts, scope)?;
    let mut r = start_up_report(bare, husk_first, husk_total, runc_first, runc_total);
    r.push_str("### Where a husk start goes (QEMU/TCG, `ctr run`)\n\n");
    r.push_str(&phases::table(&husk_phases));
    r.push_str("\nMethod: the same husk runs; each pod's shim logs `pod start phases` at info level (host wall clock; the guest's kernel entry, `/init` and agent serving from guest uptimes in the agent's health-check reply). The client's phases come from ctr's spawn and first output byte. Slowest phase in bold.\n\n");
    r.push_str(&idle_report(&idle));
    r.push_str("\n## IO (QEMU/TCG)\n\n");
    r.push_str(&io::table(&ctr_io, &agent_io));
    r.push_str("\nMethod: stdout: `ctr run --rm … sh -c 'dd if=/dev/zero bs=1M count=64'`, timed from the first byte on ctr's stdout to its end, 3 runs per runtime, alternating. The rest: the `nested_pod` driver (`--io`) boots one pod through the shim's own code on this host and measures 200 `Check` round trips, a container's 64 MiB stdout stream read by the host, a 64 MiB `dd … conv=fsync` into the container's virtio-fs rootfs and a `dd` read of a 64 MiB file the host put there (each timed on the host, minus an exec of `true`), and the same write and read on the host in the rootfs directory.\n");
    Ok(r)
}

/// The report's head and its start-up table.
fn start_up_report(
    bare: Samples,
    husk_first: Vec<Duration>,
    husk_total: Vec<Duration>,
    runc_first: Vec<Duration>,
    runc_total: Vec<Duration>,
) -> String {
    let mut r = String::from("# husk benchmarks\n\n");
    r.push_str(&format!(
        "Measured by `cargo xtask bench` on {} ({} CPUs, {}), {}.\n",
        host_cpu(),
        num_cpus(),
        host_kernel(),
        date()
    ));
    r.push_str("VMM: QEMU with TCG (this host has no usable hardware virtualization; see `containerd-shim-husk-v2 check`).\n\n");
    r.push_str("## Start-up\n\n| what | median | range | runs |\n|---|---|---|---|\n");
    r.push_str(
        &bare.row(
            "bare QEMU boot to the agent's first console line (same kernel, initramfs, machine)",
        ),
    );
    r.push_str(
        &Samples(husk_first).row("husk: `ctr run --rm` to the container's first output byte"),
    );
    r.push_str(
        &Samples(husk_total).row("husk: `ctr run --rm … echo` until ctr exits (VM torn down)"),
    );
    r.push_str(&Samples(runc_first).row("runc: `ctr run --rm` to the first output byte"));
    r.push_str(&Samples(runc_total).row("runc: `ctr run --rm … echo` until ctr exits"));
    r.push_str("\nMethod: a private containerd 1.6; `ctr run --rm --runtime <rt> busybox-local <id> echo hi`, the clock starts when ctr is spawned and stops at the first byte on its stdout. The bare boot runs `qemu-system-x86_64` with the shim's machine, CPU and kernel command line, without devices, and stops at the agent's `agent starting` console line.\n\n");
    r
}

/// The idle pod's memory table and CPU line.
fn idle_report(idle: &IdlePod) -> String {
    let mut r = String::new();
    r.push_str(
        "## Memory of one idle pod (`sleep` container)\n\n| process | PSS | RSS |\n|---|---|---|\n",
    );
    let (mut pss, mut rss) = (0, 0);
    for (name, p, r_kib) in &idle.memory {
        r.push_str(&format!(
            "| {name} | {:.1} MiB | {:.1} MiB |\n",
            *p as f64 / 1024.0,
            *r_kib as f64 / 1024.0
        ));
        pss += p;
        rss += r_kib;
    }
    r.push_str(&format!(
        "| **all but guest RAM** | **{:.1} MiB** | {:.1} MiB |\n",
        pss as f64 / 1024.0,
        rss as f64 / 1024.0
    ));
    r.push_str(&format!(
        "| guest RAM the guest touched (of {} MiB) | {:.1} MiB | |\n",
        idle.guest_kib / 1024,
        idle.guest_touched_kib as f64 / 1024.0
    ));
    r.push_str(&format!(
        "| **total** | **{:.1} MiB** | |\n",
        (pss + idle.guest_touched_kib) as f64 / 1024.0
    ));
    r.push_str(&format!("\nIdle CPU of the pod (all its host processes, averaged over {} s): **{:.0} millicores**.\n", CPU_WINDOW.as_secs(), idle.millicores));
    r.push_str("\nMethod: `ctr run -d … sleep 1000`, wait until RUNNING plus 3 s, take the pod's CPU time over the next 10 s, then sum `Pss`/`Rss` from `/proc/<pid>/smaps_rollup` of every process whose command line names the pod (shim, QEMU, its vsock backend, virtiofsd). Guest RAM is a shared memfd that QEMU and both vhost-user helpers map: it is told apart by its size in `/proc/<pid>/smaps` and counted once, as the pages resident in QEMU's mapping (under TCG every guest access goes through it); each process's row is its PSS and RSS without its guest-RAM mapping.\n");
    r
}

/// One `ctr run --rm`, timed by the client.
struct CtrRun {
    /// To the first stdout byte.
    first: Duration,
    /// To ctr's exit.
    total: Duration,
    /// Wall clock at ctr's spawn and at the first byte.
    spawned: SystemTime,
    first_at: SystemTime,
}

/// Spawns `ctr run --rm --runtime <runtime> <image> <id> <argv>…` with stdout and stderr
/// piped.
fn spawn_ctr_run(
    address: &Path,
    runtime: &str,
    image: &str,
    id: &str,
    argv: &[&str],
) -> Result<std::process::Child> {
    Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args([
            "-n",
            NAMESPACE,
            "run",
            "--rm",
            "--runtime",
            runtime,
            image,
            id,
        ])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ctr")
}

/// Spawns `ctr run --rm … echo hi` and times it.
fn first_byte(address: &Path, runtime: &str, image: &str, id: &str) -> Result<CtrRun> {
    let spawned = SystemTime::now();
    let start = Instant::now();
    let mut child = spawn_ctr_run(address, runtime, image, id, &["echo", "hi"])?;
    let mut stdout = child.stdout.take().context("ctr stdout")?;
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte).context("reading ctr stdout")?;
    let first = start.elapsed();
    let first_at = SystemTime::now();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait().context("waiting for ctr")?;
    let total = start.elapsed();
    if n == 0 || !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("ctr run with {runtime} failed ({status}): {err}");
    }
    Ok(CtrRun {
        first,
        total,
        spawned,
        first_at,
    })
}

fn bare_boot(artifacts: &Artifacts) -> Result<Duration> {
    let probe = husk_hypervisor::HostProbe::default();
    let tsc = probe
        .tsc_khz()
        .unwrap_or(husk_hypervisor::qemu::FALLBACK_TSC_KHZ);
    let cmdline = husk_hypervisor::qemu::kernel_cmdline(
        husk_hypervisor::qemu::Accel::Tcg { tsc_khz: tsc },
        "husk.log=info",
    );
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", husk_hypervisor::qemu::MACHINE])
        .args(["-accel", husk_hypervisor::qemu::TCG_ACCEL])
        .args(["-cpu", "max", "-smp", "1", "-m", "256M"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(artifacts.vmlinux())
        .arg("-initrd")
        .arg(artifacts.initrd())
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains(AGENT_MARKER) {
            found = Some(start.elapsed());
            break;
        }
        if start.elapsed() > RUN_TIMEOUT {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.context("the agent never printed its first line")
}

/// Memory and CPU of one idle pod.
struct IdlePod {
    /// `(process, PSS KiB, RSS KiB)` for each process of the pod, without guest RAM.
    memory: Vec<(String, u64, u64)>,
    /// Guest RAM the guest touched (resident in the VMM's guest mapping), and its size.
    guest_touched_kib: u64,
    guest_kib: u64,
    /// CPU time all of them used while idle, in thousandths of a CPU.
    millicores: f64,
}

/// How long idle CPU use is averaged over.
const CPU_WINDOW: Duration = Duration::from_secs(10);

fn idle_pod(ctr: &Ctr, image: &str, id: &str) -> Result<IdlePod> {
    ctr.checked([
        "run",
        "-d",
        "--runtime",
        HUSK_RUNTIME,
        image,
        id,
        "sleep",
        "1000",
    ])?;
    let measured = (|| {
        ctr.wait_task_status(id, "RUNNING", RUN_TIMEOUT)?;
        std::thread::sleep(SETTLE);
        let pids: Vec<(String, i32)> = snapshot()
            .into_iter()
            .filter(|p| p.mentions(id) && !p.is_zombie())
            .filter(|p| {
                [
                    "containerd-shim-husk-v2",
                    "qemu-system-x86_64",
                    "husk-vmm",
                    "virtiofsd",
                ]
                .contains(&p.name().as_str())
            })
            .map(|p| (p.name(), p.pid))
            .collect();
        let ticks =
            |pids: &[(String, i32)]| pids.iter().map(|(_, pid)| cpu_ticks(*pid)).sum::<u64>();
        let before = ticks(&pids);
        std::thread::sleep(CPU_WINDOW);
        let used = ticks(&pids).saturating_sub(before) as f64 / USER_HZ;
        let guest_kib = pids
            .iter()
            .find(|(name, _)| name == "qemu-system-x86_64")
            .and_then(|(_, pid)| qemu_memory_kib(*pid))
            .context("reading the guest RAM size from QEMU's command line")?;
        let mut guest_touched_kib = 0;
        let mut memory = Vec::new();
        for (name, pid) in &pids {
            let pid_u32 = u32::try_from(*pid).unwrap_or_default();
            let m = smaps::of_process(pid_u32, guest_kib)?;
            if name == "qemu-system-x86_64" {
                guest_touched_kib = m.guest_rss;
            }
            memory.push((
                format!("{name} (pid {pid}, {})", role(*pid)),
                m.own_pss(),
                m.monitor_rss(),
            ));
        }
        anyhow::Ok(IdlePod {
            memory,
            guest_touched_kib,
            guest_kib,
            millicores: used / CPU_WINDOW.as_secs_f64() * 1000.0,
        })
    })();
    let _ = ctr.run(["task", "kill", "-s", "SIGKILL", id]);
    let _ = ctr.run(["task", "delete", "-f", id]);
    let _ = ctr.run(["container", "rm", id]);
    let pod = measured?;
    if pod.memory.is_empty() {
        bail!("found no processes of the idle pod {id}");
    }
    Ok(pod)
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// QEMU's `-m <n>M`, in KiB.
fn qemu_memory_kib(pid: i32) -> Option<u64> {
    let args = cmdline(pid);
    let m = args.iter().skip_while(|a| *a != "-m").nth(1)?;
    Some(m.trim_end_matches('M').parse::<u64>().ok()? * 1024)
}

/// What a pod process is, from its arguments.
fn role(pid: i32) -> &'static str {
    let args = cmdline(pid);
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let program = args.first().map(String::as_str).unwrap_or_default();
    if program.ends_with("qemu-system-x86_64") {
        "VMM without guest RAM"
    } else if has("--vsock-backend") {
        "vsock backend"
    } else if program.ends_with("virtiofsd") {
        "virtio-fs"
    } else if has("-id") {
        "shim"
    } else {
        "other"
    }
}

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| format!("Linux {}", u.release().to_string_lossy()))
        .unwrap_or_default()
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
