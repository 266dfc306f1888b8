//! The goals of issue 11, each judged from the figures this run wrote into the report (read
//! back from its tables by their row labels, so the verdicts cannot drift from the numbers).

/// Reads the number at the start of column `column` (0 = the label) of the first table row
/// whose label starts with `label`.
fn figure(report: &str, label: &str, column: usize) -> Option<f64> {
    let row = report
        .lines()
        .find(|l| l.strip_prefix("| ").is_some_and(|r| r.starts_with(label)))?;
    let cell = row
        .split('|')
        .nth(column + 1)?
        .trim()
        .trim_start_matches("**");
    let number: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

/// Sum of column 1 over every row whose label starts with `label`.
fn sum(report: &str, label: &str) -> f64 {
    report
        .lines()
        .filter(|l| l.strip_prefix("| ").is_some_and(|r| r.starts_with(label)))
        .filter_map(|l| {
            let cell = l.split('|').nth(2)?.trim();
            cell.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

struct Goal {
    what: &'static str,
    measured: Option<String>,
    met: Option<bool>,
}

/// The Markdown section: each goal, what was measured, and whether it is met.
pub fn section(report: &str) -> String {
    let floor = figure(report, "bare QEMU boot", 1);
    let husk = figure(
        report,
        "husk: `ctr run --rm` to the container's first output byte",
        1,
    );
    let overhead = floor.zip(husk).map(|(f, h)| (h / f - 1.0) * 100.0);
    let init = figure(report, "kernel entry → /init", 1);
    let qemu_kvm = figure(report, "boot_to_agent_ms", 1);
    let husk_vmm = figure(report, "boot_to_agent_ms", 2);
    let vmm_own = figure(report, "vmm_rss_excl_guest_kib", 2).map(|k| k / 1024.0);
    let shim = sum(report, "containerd-shim-husk-v2");
    let virtiofsd = sum(report, "virtiofsd");
    let guest = figure(report, "guest RAM the guest touched", 1);
    let pods = figure(report, "idle pods reached", 1);
    let together = report
        .lines()
        .find(|l| l.contains("pods started at once: until all run"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|r| r.split('×').next())
        .and_then(|r| r.trim().parse::<f64>().ok());
    let rtt = figure(report, "agent RPC round trip", 1);
    let goals = [
        Goal {
            what: "start overhead over the bare boot floor ≤ 15 % (QEMU/TCG, `ctr run` first byte vs bare boot to the agent)",
            measured: overhead.map(|o| format!("{o:.0} %")),
            met: overhead.map(|o| o <= 15.0),
        },
        Goal {
            what: "guest uptime at `/init` ≤ 0.6 s under TCG (in a pod)",
            measured: init.map(|i| format!("{i:.0} ms")),
            met: init.map(|i| i <= 600.0),
        },
        Goal {
            what: "husk-vmm boot to agent ≤ half of QEMU/KVM's (nested KVM)",
            measured: qemu_kvm
                .zip(husk_vmm)
                .map(|(q, h)| format!("{h:.0} vs {q:.0} ms ({:.2}×)", h / q)),
            met: qemu_kvm.zip(husk_vmm).map(|(q, h)| h <= q / 2.0),
        },
        Goal {
            what: "everything but guest RAM ≤ 10 MiB with husk-vmm (its own memory under nested KVM + the shim and virtiofsd as measured here)",
            measured: vmm_own.map(|v| {
                format!(
                    "{:.1} MiB (husk-vmm {v:.1}, shim {shim:.1}, virtiofsd {virtiofsd:.1})",
                    v + shim + virtiofsd
                )
            }),
            met: vmm_own.map(|v| v + shim + virtiofsd <= 10.0),
        },
        Goal {
            what: "guest RAM an idle busybox pod touched ≤ 32 MiB",
            measured: guest.map(|g| format!("{g:.1} MiB")),
            met: guest.map(|g| g <= 32.0),
        },
        Goal {
            what: "100 idle pods on this machine",
            measured: pods.map(|p| format!("{p:.0}")),
            met: pods.map(|p| p >= 100.0),
        },
        Goal {
            what: "10 pods started at once all run within 3× one pod's start",
            measured: together.map(|t| format!("{t:.1}×")),
            met: together.map(|t| t <= 3.0),
        },
        Goal {
            what: "agent RPC round trip ≤ 1 ms under TCG",
            measured: rtt.map(|r| format!("{r:.0} µs")),
            met: rtt.map(|r| r <= 1000.0),
        },
    ];
    let mut s = String::from("## Goals (issue 11)\n\n| goal | measured | met |\n|---|---|---|\n");
    for g in goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        s.push_str(&format!(
            "| {} | {} | {met} |\n",
            g.what,
            g.measured.unwrap_or_else(|| "–".into())
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
| bare QEMU boot to the agent's first console line (same kernel) | 675 ms | 656–857 ms | 5 |
| husk: `ctr run --rm` to the container's first output byte | 1440 ms | 1323–1569 ms | 5 |
| kernel entry → /init | **654 ms** | 589–889 ms |
| containerd-shim-husk-v2 (pid 1, shim) | 7.7 MiB | 9.7 MiB |
| containerd-shim-husk-v2 (pid 2, shim) | 0.4 MiB | 0.8 MiB |
| virtiofsd (pid 3, virtio-fs) | 1.4 MiB | 3.7 MiB |
| guest RAM the guest touched (of 256 MiB) | 43.0 MiB | |
| agent RPC round trip (Check, median of 200) | 707 µs | 500–3620 |
| 10 pods started at once: until all run | 9702 ms (6.5× one pod; slowest pod 9700 ms) |
| idle pods reached (stopped by the bound of 100 pods) | 100 |
| boot_to_agent_ms | 5564 | 4048 |
| vmm_rss_excl_guest_kib | 55232 | 2792 |
";

    #[test]
    fn every_goal_is_judged_from_its_row() {
        let s = section(REPORT);
        assert!(s.contains("| 113 % | **no** |"), "{s}");
        assert!(s.contains("| 654 ms | **no** |"), "{s}");
        assert!(s.contains("| 4048 vs 5564 ms (0.73×) | **no** |"), "{s}");
        assert!(
            s.contains("| 12.2 MiB (husk-vmm 2.7, shim 8.1, virtiofsd 1.4) | **no** |"),
            "{s}"
        );
        assert!(s.contains("| 43.0 MiB | **no** |"), "{s}");
        assert!(s.contains("| 100 | yes |"), "{s}");
        assert!(s.contains("| 6.5× | **no** |"), "{s}");
        assert!(s.contains("| 707 µs | yes |"), "{s}");
    }

    #[test]
    fn a_missing_figure_is_not_measured_not_met() {
        let s = section("| bare QEMU boot | 675 ms |\n");
        assert!(s.contains("| – | not measured |"), "{s}");
        assert!(!s.contains("yes"), "{s}");
    }
}
