//! QEMU/KVM next to husk's built-in monitor inside one nested host: the `nested_pod` driver (a bin of this crate)
//! launches pods through the backend selection the shim uses, alternating backends so load
//! drifts affect both alike, and prints one `RESULT` line per pod; each husk-vmm must log
//! its syscall filter, its boot timer and a clean stop. Used by the
//! `nested_husk_vmm` test (which checks every pod ran) and by `cargo xtask bench` (which
//! reports the medians).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use super::{NestedError, NestedHost, NestedOutput, VMM_BINARY};
use crate::{ARTIFACTS_ENV, Artifacts};

/// Numeric columns of the `RESULT` lines, in table order.
pub const METRICS: [&str; 14] = [
    "phase_helpers_ms",
    "phase_vmm_spawn_ms",
    "phase_firmware_ms",
    "phase_kernel_ms",
    "phase_init_ms",
    "phase_connect_ms",
    "launch_ms",
    "boot_to_agent_ms",
    "guest_uptime_at_agent_ms",
    "to_container_output_ms",
    "vmm_rss_kib",
    "guest_ram_rss_kib",
    "vmm_rss_excl_guest_kib",
    "vmm_pss_anon_kib",
];

/// The IO figures `nested_pod --io` adds (in the last round, when asked for).
pub const IO_METRICS: [&str; 6] = [
    "rpc_rtt_us",
    "stdout_mib_s",
    "fs_write_mib_s",
    "fs_read_mib_s",
    "host_write_mib_s",
    "host_read_mib_s",
];

/// husk-vmm's log lines for its syscall filter and for a VM the guest itself reset.
pub(crate) const SECCOMP_LINE: &str = "syscall filters installed";
pub(crate) const CLEAN_STOP_LINE: &str = "VM stopped, status: 0, reason: guest reset the machine";

/// What the `nested_pod` driver prints before the reason it failed.
pub const DRIVER_ERROR_PREFIX: &str = "nested_pod: error";

/// The driver's error line in a nested run's output, if it printed one.
pub fn driver_error_line(output: &str) -> Option<&str> {
    output.lines().find(|l| l.starts_with(DRIVER_ERROR_PREFIX))
}

/// How long the whole nested run may take (outer boot plus every pod).
const RUN_TIMEOUT: Duration = Duration::from_secs(400);

const SCRIPT: &str = r#"
set -u
for round in $(seq 1 "$ROUNDS"); do
    for backend in qemu builtin; do
        echo "== round $round, backend $backend" >&2
        io=""
        if [ "$round" = "$ROUNDS" ] && [ "$IO" = 1 ]; then io="--io"; fi
        "$NESTED_POD" --config "$HUSK_NESTED_SCRATCH/config.toml" --backend "$backend" \
            --vmm "$VMM" --state-dir /run/husk-nested \
            --id "pod-$backend-$round" $io || echo "FAILED backend=$backend exit=$?"
    done
done
"#;

#[derive(Debug, Error)]
pub enum CompareError {
    #[error("{} is missing: run `cargo xtask build`", .0.display())]
    MissingArtifact(std::path::PathBuf),
    #[error("writing the pods' husk config: {0}")]
    Config(std::io::Error),
    #[error(transparent)]
    Nested(#[from] NestedError),
    #[error(
        "the reference pods (QEMU/KVM) failed inside the nested host, so the harness itself \
         is broken: {0}"
    )]
    Reference(String),
    #[error(
        "the reference pod did not run on QEMU/KVM — husk's probe found the nested host's /dev/kvm unusable: {0}"
    )]
    ReferenceNotKvm(String),
    #[error("the built-in backend ({vmm}) failed: {output}")]
    Builtin { vmm: String, output: String },
    #[error("container failed: {0}")]
    Container(String),
    #[error("{got} of {want} built-in monitors logged {what:?}: {output}")]
    MonitorLog {
        what: &'static str,
        got: usize,
        want: usize,
        output: String,
    },
    #[error("the pod network under nested KVM: {what}: {output}")]
    Network { what: String, output: String },
    #[error("the boot-timer device reported {got} of {want} built-in boots: {output}")]
    BootTimer {
        got: usize,
        want: usize,
        output: String,
    },
}

/// Every pod of both backends, as measured.
pub struct Comparison {
    pub rounds: usize,
    /// `RESULT` lines of the QEMU/KVM pods.
    pub qemu: Vec<String>,
    /// `RESULT` lines of the husk-vmm pods.
    pub builtin: Vec<String>,
    /// What husk-vmm's boot-timer device logged per boot: ms from VM creation to the
    /// agent's ready marker.
    pub boot_timer_ms: Vec<u64>,
    pub outer: NestedOutput,
}

/// Runs `rounds` pods per backend with the `nested_pod` driver at `driver`; `scratch` is the
/// caller's scratch directory; with `io`, each backend's last pod also measures IO
/// ([`IO_METRICS`]). Fails unless every pod of both backends ran its container.
pub fn run(
    artifacts: &Artifacts,
    scratch: &Path,
    driver: &Path,
    rounds: usize,
    io: bool,
) -> Result<Comparison, CompareError> {
    let vmm = artifacts.dir().join(VMM_BINARY);
    let outer = driver_host(artifacts, scratch, driver)?
        .env("ROUNDS", &rounds.to_string())
        .env("IO", if io { "1" } else { "0" })
        .run(SCRIPT, RUN_TIMEOUT)?;
    let stdout = outer.stdout_text();
    let qemu = results(&stdout, "qemu");
    let builtin = results(&stdout, "builtin");
    if qemu.len() != rounds {
        return Err(CompareError::Reference(outer.describe()));
    }
    if builtin.len() != rounds {
        return Err(CompareError::Builtin {
            vmm: vmm.display().to_string(),
            output: outer.describe(),
        });
    }
    if let Some(line) = qemu
        .iter()
        .find(|l| value(l, "backend") != Some("qemu-kvm"))
    {
        return Err(CompareError::ReferenceNotKvm(line.clone()));
    }
    if let Some(line) = qemu
        .iter()
        .chain(&builtin)
        .find(|l| value(l, "exit_status") != Some("0"))
    {
        return Err(CompareError::Container(line.clone()));
    }
    let stderr = outer.stderr_text();
    // Every monitor confined itself, and every VM ended by the guest's clean reset (the
    // i8042), not by a crash or a kill.
    for what in [SECCOMP_LINE, CLEAN_STOP_LINE] {
        let got = stderr.matches(what).count();
        if got != rounds {
            return Err(CompareError::MonitorLog {
                what,
                got,
                want: rounds,
                output: outer.describe(),
            });
        }
    }
    let boot_timer_ms = boot_timer_reports(&stderr);
    if boot_timer_ms.len() != rounds {
        return Err(CompareError::BootTimer {
            got: boot_timer_ms.len(),
            want: rounds,
            output: outer.describe(),
        });
    }
    Ok(Comparison {
        rounds,
        qemu,
        builtin,
        boot_timer_ms,
        outer,
    })
}

impl Comparison {
    /// The medians as a Markdown table.
    pub fn table(&self) -> String {
        let mut t = format!(
            "| metric (median of {} pods each) | QEMU/KVM | husk-vmm |\n|---|---|---|\n",
            self.rounds
        );
        let measured_io = IO_METRICS
            .iter()
            .filter(|k| self.qemu.iter().any(|l| value(l, k).is_some()));
        for key in METRICS.iter().chain(measured_io) {
            let _ = writeln!(
                t,
                "| {key} | {} | {} |",
                median(&self.qemu, key),
                median(&self.builtin, key)
            );
        }
        let _ = writeln!(
            t,
            "| boot_timer_init_ms (monitor's boot-timer device) | – | {} |",
            median_of(self.boot_timer_ms.clone())
        );
        t
    }
}

/// A nested host set up for the `nested_pod` driver at `driver`: the artifacts checked,
/// the pods' husk config written to `scratch`, and the script's environment
/// (`HUSK_ARTIFACTS`, `NESTED_POD`, `VMM`).
pub(crate) fn driver_host(
    artifacts: &Artifacts,
    scratch: &Path,
    driver: &Path,
) -> Result<NestedHost, CompareError> {
    let vmm = artifacts.dir().join(VMM_BINARY);
    for f in [
        artifacts.kernel(),
        artifacts.initrd(),
        artifacts.virtiofsd(),
        vmm.clone(),
        driver.to_path_buf(),
    ] {
        if !f.is_file() {
            return Err(CompareError::MissingArtifact(f));
        }
    }
    write_config(artifacts, &scratch.join("config.toml")).map_err(CompareError::Config)?;
    Ok(NestedHost::new(artifacts, scratch)?
        .env(ARTIFACTS_ENV, &artifacts.dir().display().to_string())
        .env("NESTED_POD", &driver.display().to_string())
        .env("VMM", &vmm.display().to_string()))
}

/// A husk config for the pods: the artifacts, generous timeouts (double emulation).
fn write_config(artifacts: &Artifacts, path: &Path) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "[hypervisor]\nkernel = {:?}\ninitrd = {:?}\n[virtiofs]\nvirtiofsd_path = {:?}\n\
             [agent]\nconnect_timeout_ms = 90000\nrpc_timeout_ms = 60000\n",
            artifacts.kernel(),
            artifacts.initrd(),
            artifacts.virtiofsd()
        ),
    )
}

/// The value of `key=` in a `RESULT` line.
pub fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// The `RESULT` lines of the pods that asked for `backend`.
pub(crate) fn results(stdout: &str, backend: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("RESULT ") && value(l, "requested") == Some(backend))
        .map(str::to_string)
        .collect()
}

fn median(lines: &[String], key: &str) -> String {
    let mut v: Vec<f64> = lines
        .iter()
        .filter_map(|l| value(l, key)?.parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).map_or("?".into(), |m| format!("{m}"))
}

fn median_of(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    v.get(v.len() / 2).map_or("?".into(), u64::to_string)
}

/// What the monitor's boot-timer device logged (through the pod's log) for each built-in
/// boot.
fn boot_timer_reports(stderr: &str) -> Vec<u64> {
    const MARK: &str = "guest reached init after ";
    stderr
        .match_indices(MARK)
        .filter_map(|(at, _)| stderr[at + MARK.len()..].split(' ').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "noise\n\
        RESULT requested=qemu backend=qemu-kvm boot_to_agent_ms=500 exit_status=0\n\
        RESULT requested=builtin backend=builtin boot_to_agent_ms=30 exit_status=0\n\
        RESULT requested=qemu backend=qemu-kvm boot_to_agent_ms=700 exit_status=0\n\
        FAILED backend=builtin exit=1\n";

    #[test]
    fn result_lines_are_split_by_requested_backend() {
        assert_eq!(results(OUT, "qemu").len(), 2);
        assert_eq!(results(OUT, "builtin").len(), 1);
        assert_eq!(median(&results(OUT, "qemu"), "boot_to_agent_ms"), "700");
        assert_eq!(median(&results(OUT, "builtin"), "launch_ms"), "?");
        assert_eq!(value(&results(OUT, "qemu")[0], "backend"), Some("qemu-kvm"));
    }

    #[test]
    fn boot_timer_lines_are_found_in_the_log() {
        let log = "x INFO guest reached init after 812 ms, boot_ms: 812\n\
                   y guest reached init after 90 ms\nz guest reached init after soon\n";
        assert_eq!(boot_timer_reports(log), vec![812, 90]);
    }
}
