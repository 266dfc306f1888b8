//! Pod networking under nested KVM: the `nested_pod` driver's `--net` modes in one outer
//! VM. The outer VM has no CNI; the driver sets up what CNI's bridge plugin would (a
//! bridge with the host's address, per pod a namespace with a veth, an address and a
//! default route) and the pod's VM takes it over through the shim's own code.
//! [`http`] is the integration test's check (husk-vmm serves HTTP at the pod's address);
//! [`bench`] the network benchmark for both KVM backends.

use std::path::Path;
use std::time::Duration;

use super::NestedOutput;
use super::compare::{
    CLEAN_STOP_LINE, CompareError, driver_error_line, driver_host, results, value,
};
use crate::Artifacts;
use crate::net_figures::{PathFigures, Ping, TABLE_HEADER};

/// Bound on the HTTP check's outer run (boot, one pod).
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on the benchmark's outer run (boot, two pods per backend, every path).
const BENCH_TIMEOUT: Duration = Duration::from_secs(900);

const HTTP_SCRIPT: &str = r#"
set -u
"$NESTED_POD" --config "$HUSK_NESTED_SCRATCH/config.toml" --backend builtin --vmm "$VMM" \
    --state-dir /run/husk-nested --id pod-net --net http || echo "FAILED exit=$?"
"#;

const BENCH_SCRIPT: &str = r#"
set -u
"$NESTED_POD" --config "$HUSK_NESTED_SCRATCH/config.toml" --backend "$BACKEND" \
    --vmm "$VMM" --state-dir /run/husk-nested --id "net-$BACKEND" --net bench \
    || echo "FAILED backend=$BACKEND exit=$?"
"#;

/// Outer boots per backend: the nested host sometimes loses a guest under sustained load
/// (issue 11); a second boot usually gets through.
const BENCH_ATTEMPTS: usize = 2;

/// A husk-vmm pod with a network: busybox `httpd` in it answered at the pod's address from
/// the nested host, and the pod's namespace held nothing of husk's afterwards. The pod's
/// `RESULT` line and the whole outer run.
pub fn http(
    artifacts: &Artifacts,
    scratch: &Path,
    driver: &Path,
) -> Result<(String, NestedOutput), CompareError> {
    let outer = driver_host(artifacts, scratch, driver)?.run(HTTP_SCRIPT, HTTP_TIMEOUT)?;
    let failed = |what: &str| CompareError::Network {
        what: what.to_owned(),
        output: outer.describe(),
    };
    let line = match results(&outer.stdout_text(), "builtin").as_slice() {
        [line] => line.clone(),
        _ => return Err(failed("the husk-vmm pod with a network did not run")),
    };
    if value(&line, "backend") != Some("builtin") {
        return Err(failed("the pod did not run on husk-vmm"));
    }
    for (key, want) in [("http", "ok"), ("netns_clean", "yes"), ("exit_status", "0")] {
        if value(&line, key) != Some(want) {
            return Err(failed(&format!("{key} is not {want}")));
        }
    }
    if !outer.stderr_text().contains(CLEAN_STOP_LINE) {
        return Err(failed("husk-vmm did not report a clean stop"));
    }
    Ok((line, outer))
}

/// What [`bench`] measured.
pub struct NetBench {
    /// Per backend (`qemu-kvm`, `builtin`): its paths, or why they were not measured.
    pub backends: Vec<(String, Result<Vec<PathFigures>, String>)>,
    /// Wall time of all outer runs.
    pub elapsed: Duration,
}

/// Throughput and round-trip time host → pod and pod → pod with QEMU/KVM and husk-vmm,
/// each next to a plain namespace on the same bridge; each backend in an outer boot of
/// its own, up to [`BENCH_ATTEMPTS`] times. A backend that never got through is reported
/// with its last error, not dropped.
pub fn bench(
    artifacts: &Artifacts,
    scratch: &Path,
    driver: &Path,
) -> Result<NetBench, CompareError> {
    let mut backends = Vec::new();
    let mut elapsed = Duration::ZERO;
    for (requested, name) in [("qemu", "qemu-kvm"), ("builtin", "builtin")] {
        let mut outcome = Err(String::from("not run"));
        for _ in 0..BENCH_ATTEMPTS {
            let outer = driver_host(artifacts, scratch, driver)?
                .env("BACKEND", requested)
                .run(BENCH_SCRIPT, BENCH_TIMEOUT);
            outcome = match outer {
                Ok(outer) => {
                    elapsed += outer.elapsed;
                    let mut paths = net_paths(&outer.stdout_text(), name);
                    if paths.len() >= 2 {
                        if paths.len() == 2 {
                            paths.push(unmeasured(name, "pod → pod", &outer));
                        }
                        Ok(paths)
                    } else {
                        Err(first_error(&outer))
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            if outcome.is_ok() {
                break;
            }
            eprintln!(
                "nested network bench, {name}: {}",
                outcome.as_ref().err().map_or("", String::as_str)
            );
        }
        backends.push((name.to_owned(), outcome));
    }
    Ok(NetBench { backends, elapsed })
}

/// A path the run did not get through, with the driver's reason as its label.
fn unmeasured(backend: &str, path: &str, outer: &NestedOutput) -> PathFigures {
    let stderr = outer.stderr_text();
    let why = stderr
        .lines()
        .find_map(|l| l.strip_prefix("nested_pod: pod_to_pod not measured: "))
        .map_or_else(
            || String::from("the nested host went down first"),
            |w| w.chars().take(200).collect(),
        );
    PathFigures {
        what: format!(
            "{}: {path} — not measured: {}",
            label(backend),
            why.replace('|', "/")
        ),
        mib_per_s: Vec::new(),
        ping: Ping::default(),
    }
}

/// The driver's error line, or the outer run's first lines if it printed none.
fn first_error(outer: &NestedOutput) -> String {
    let stderr = outer.stderr_text();
    let line = driver_error_line(&stderr)
        .map(str::to_owned)
        .unwrap_or_else(|| outer.describe());
    line.chars().take(300).collect()
}

impl NetBench {
    /// One Markdown table, every backend's paths (or why it has none).
    pub fn table(&self) -> String {
        let mut t = format!("{TABLE_HEADER}\n");
        for (backend, paths) in &self.backends {
            match paths {
                Ok(paths) => {
                    for p in paths {
                        t.push_str(&p.row());
                        t.push('\n');
                    }
                }
                Err(why) => {
                    let why = why.replace('|', "/").replace('\n', " ");
                    t.push_str(&format!("| {} | not measured: {why} | |\n", label(backend)));
                }
            }
        }
        t
    }
}

fn label(backend: &str) -> &'static str {
    if backend == "builtin" {
        "husk-vmm"
    } else {
        "QEMU/KVM"
    }
}

/// The `NETPATH` lines of `backend`:
/// `NETPATH backend=B path=P mib_per_s=1.5,2.0 ping_ms=min/avg/max`.
fn net_paths(stdout: &str, backend: &str) -> Vec<PathFigures> {
    stdout
        .lines()
        .filter(|l| l.starts_with("NETPATH ") && value(l, "backend") == Some(backend))
        .filter_map(|l| {
            let rates = value(l, "mib_per_s")?
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<f64>, _>>()
                .ok()?;
            let ping: Vec<f64> = value(l, "ping_ms")?
                .split('/')
                .filter_map(|n| n.parse().ok())
                .collect();
            let [min, avg, max] = ping[..] else {
                return None;
            };
            let name = match value(l, "path")? {
                "floor" => "floor: nested host → plain namespace",
                "host_to_pod" => "nested host → pod",
                "pod_to_pod" => "pod → pod",
                _ => return None,
            };
            let backend = if backend == "builtin" {
                "husk-vmm"
            } else {
                "QEMU/KVM"
            };
            Some(PathFigures {
                what: format!("{backend}: {name}"),
                mib_per_s: rates,
                ping: Ping { min, avg, max },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netpath_lines_are_read_per_backend() {
        let out = "NETPATH backend=builtin path=floor mib_per_s=10.00,12.50 ping_ms=0.100/0.200/0.300\n\
                   NETPATH backend=qemu-kvm path=pod_to_pod mib_per_s=1.00 ping_ms=1.000/2.000/3.000\n\
                   NETPATH backend=builtin path=host_to_pod mib_per_s=x ping_ms=1/2/3\n\
                   FAILED backend=builtin exit=1\n";
        let b = net_paths(out, "builtin");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].what, "husk-vmm: floor: nested host → plain namespace");
        assert_eq!(b[0].mib_per_s, vec![10.0, 12.5]);
        assert_eq!(b[0].ping.avg, 0.2);
        assert_eq!(net_paths(out, "qemu-kvm")[0].what, "QEMU/KVM: pod → pod");
    }
}
