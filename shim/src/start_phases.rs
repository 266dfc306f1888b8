//! A pod's start, phase by phase, on the host's wall clock: where the time between the
//! shim's start and the first container's process goes. Logged once per pod at info level
//! (`pod start phases`), and read from there by `cargo xtask bench`.
//!
//! The host marks its own steps. The guest's (kernel entry, `/init`, agent serving) come
//! from the agent's `Check` reply, which carries guest uptimes: the guest clock starts
//! with the kernel's early timekeeping, so the host time of the kernel's entry is the
//! reply's arrival minus the guest's uptime in it (half a round trip late at most; the
//! firmware phase before it includes the kernel's first few milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_hypervisor::LaunchTimes;
use husk_protocol::agent::CheckResponse;
use slog::{Logger, info};

/// A step of a pod's start, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// The shim daemon was up.
    ShimStarted,
    /// The request that boots the pod arrived.
    Requested,
    /// Host state was ready (pod directory, cgroup, network): the VM's launch began.
    LaunchBegun,
    /// virtiofsd and the vsock backend were running.
    HelpersReady,
    /// The monitor was spawned.
    VmmSpawned,
    /// The guest kernel began keeping time (derived).
    KernelEntry,
    /// The kernel ran `/init` (derived).
    Init,
    /// The agent was serving (derived).
    AgentServing,
    /// The host had the agent's `Check` reply.
    AgentConnected,
    /// The guest's sandbox was set up.
    SandboxCreated,
    /// The first container was created.
    ContainerCreated,
    /// Its process was started.
    ProcessStarted,
}

impl Mark {
    /// The phase that ends at this mark, as logged (`<name>_ms`).
    fn phase(self) -> &'static str {
        match self {
            Mark::ShimStarted => "shim_started",
            Mark::Requested => "shim",
            Mark::LaunchBegun => "host_setup",
            Mark::HelpersReady => "helpers",
            Mark::VmmSpawned => "vmm_spawn",
            Mark::KernelEntry => "firmware",
            Mark::Init => "kernel",
            Mark::AgentServing => "init",
            Mark::AgentConnected => "connect",
            Mark::SandboxCreated => "sandbox",
            Mark::ContainerCreated => "container_create",
            Mark::ProcessStarted => "process_start",
        }
    }
}

/// The marks of one pod's start.
#[derive(Debug, Clone, Default)]
pub struct StartTimeline {
    marks: Vec<(Mark, SystemTime)>,
    logged: bool,
}

impl StartTimeline {
    /// Records `mark` now.
    pub fn mark(&mut self, mark: Mark) {
        self.mark_at(mark, SystemTime::now());
    }

    /// Records `mark` at `at` (a later record of the same mark wins).
    pub fn mark_at(&mut self, mark: Mark, at: SystemTime) {
        self.marks.retain(|(m, _)| *m != mark);
        self.marks.push((mark, at));
        self.marks.sort_by_key(|(m, _)| *m);
    }

    /// Whether `mark` was recorded.
    pub fn has(&self, mark: Mark) -> bool {
        self.marks.iter().any(|(m, _)| *m == mark)
    }

    /// The helpers' and the monitor's start, as the VM recorded them.
    pub fn launched(&mut self, times: LaunchTimes) {
        if let Some(t) = times.helpers_ready {
            self.mark_at(Mark::HelpersReady, t);
        }
        if let Some(t) = times.vmm_spawned {
            self.mark_at(Mark::VmmSpawned, t);
        }
    }

    /// The agent's `Check` reply, which arrived at `arrived`: places the guest's marks. The
    /// uptimes are the guest's word: a mark it would put before the pod was requested or
    /// after the reply is left out.
    pub fn agent_connected(&mut self, check: &CheckResponse, arrived: SystemTime) {
        let earliest = self.marks.first().map(|(_, t)| *t);
        self.mark_at(Mark::AgentConnected, arrived);
        if check.uptime_us == 0 {
            return; // an agent that does not say
        }
        let Some(entry) = arrived
            .checked_sub(Duration::from_micros(check.uptime_us))
            .filter(|e| earliest.is_none_or(|first| *e >= first))
        else {
            return;
        };
        self.mark_at(Mark::KernelEntry, entry);
        let after_entry = |d: Duration| entry.checked_add(d).filter(|t| *t <= arrived);
        if check.init_uptime_us > 0 {
            if let Some(t) = after_entry(Duration::from_micros(check.init_uptime_us)) {
                self.mark_at(Mark::Init, t);
            }
        }
        if check.boot_to_agent_ms > 0 {
            if let Some(t) = after_entry(Duration::from_millis(check.boot_to_agent_ms)) {
                self.mark_at(Mark::AgentServing, t);
            }
        }
    }

    /// Each phase's length: from the previous recorded mark to this one (a clock that
    /// disagrees by a little gives 0, not a negative length).
    pub fn phases(&self) -> Vec<(&'static str, Duration)> {
        self.marks
            .windows(2)
            .map(|w| {
                let (from, to) = (w[0].1, w[1].1);
                (w[1].0.phase(), to.duration_since(from).unwrap_or_default())
            })
            .collect()
    }

    /// From the first mark to the last.
    pub fn total(&self) -> Duration {
        match (self.marks.first(), self.marks.last()) {
            (Some((_, a)), Some((_, b))) => b.duration_since(*a).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Logs the phases once, at info level, when the first process has started.
    pub fn log_once(&mut self, log: &Logger) {
        if self.logged || !self.has(Mark::ProcessStarted) {
            return;
        }
        self.logged = true;
        let line = self
            .phases()
            .iter()
            .map(|(name, d)| format!("{name}_ms={}", d.as_millis()))
            .collect::<Vec<_>>()
            .join(" ");
        let first_us = self
            .marks
            .first()
            .and_then(|(_, t)| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros());
        info!(log, "pod start phases";
              "phases" => line, "total_ms" => self.total().as_millis(),
              "first_mark" => self.marks.first().map_or("", |(m, _)| m.phase()),
              "first_mark_unix_us" => first_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn phases_follow_the_marks_and_the_guest_clock() {
        let mut t = StartTimeline::default();
        t.mark_at(Mark::ShimStarted, at(0));
        t.mark_at(Mark::Requested, at(30));
        t.mark_at(Mark::LaunchBegun, at(40));
        t.launched(LaunchTimes {
            helpers_ready: Some(at(50)),
            vmm_spawned: Some(at(60)),
        });
        let check = CheckResponse {
            uptime_us: 900_000,
            init_uptime_us: 600_000,
            boot_to_agent_ms: 880,
            ..Default::default()
        };
        // The reply arrives 1160 ms in: the guest clock started at 260 ms.
        t.agent_connected(&check, at(1160));
        t.mark_at(Mark::SandboxCreated, at(1200));
        t.mark_at(Mark::ContainerCreated, at(1300));
        t.mark_at(Mark::ProcessStarted, at(1320));
        let phases: Vec<(&str, u128)> = t
            .phases()
            .into_iter()
            .map(|(n, d)| (n, d.as_millis()))
            .collect();
        assert_eq!(
            phases,
            [
                ("shim", 30),
                ("host_setup", 10),
                ("helpers", 10),
                ("vmm_spawn", 10),
                ("firmware", 200),
                ("kernel", 600),
                ("init", 280),
                ("connect", 20),
                ("sandbox", 40),
                ("container_create", 100),
                ("process_start", 20),
            ]
        );
        assert_eq!(t.total(), Duration::from_millis(1320));
    }

    #[test]
    fn missing_marks_are_skipped_not_invented() {
        let mut t = StartTimeline::default();
        t.mark_at(Mark::Requested, at(0));
        // An agent without uptimes: no guest marks.
        t.agent_connected(&CheckResponse::default(), at(500));
        t.mark_at(Mark::ProcessStarted, at(700));
        let names: Vec<&str> = t.phases().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["connect", "process_start"]);
        assert!(!t.has(Mark::KernelEntry));
    }

    #[test]
    fn hostile_uptimes_neither_panic_nor_place_marks_outside_the_start() {
        let mut t = StartTimeline::default();
        t.mark_at(Mark::Requested, at(0));
        let check = |uptime_us, init_uptime_us, boot_to_agent_ms| CheckResponse {
            uptime_us,
            init_uptime_us,
            boot_to_agent_ms,
            ..Default::default()
        };
        // A kernel that started before the pod was asked for.
        t.agent_connected(&check(u64::MAX, u64::MAX, u64::MAX), at(1000));
        assert!(t.has(Mark::AgentConnected) && !t.has(Mark::KernelEntry));
        // Marks after the reply itself.
        t.agent_connected(&check(500_000, u64::MAX, u64::MAX), at(1000));
        assert!(t.has(Mark::KernelEntry));
        assert!(!t.has(Mark::Init) && !t.has(Mark::AgentServing));
    }

    #[test]
    fn logged_once_and_only_after_the_process_started() {
        let mut t = StartTimeline::default();
        let log = Logger::root(slog::Discard, slog::o!());
        t.mark_at(Mark::Requested, at(0));
        t.log_once(&log);
        assert!(!t.logged);
        t.mark_at(Mark::ProcessStarted, at(10));
        t.log_once(&log);
        assert!(t.logged);
    }
}
