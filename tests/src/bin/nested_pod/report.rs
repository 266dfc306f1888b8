//! The one-line result `nested_pod` prints.

use std::fmt;
use std::time::Duration;

use husk_tests::nested::smaps::Memory;

/// What one pod run measured.
pub struct Report {
    /// The `--backend` asked for.
    pub requested: String,
    /// The backend's own name (`qemu-kvm`, `builtin`, …).
    pub backend: String,
    /// Why the selection picked it.
    pub reason: String,
    /// `Vmm::launch` returned.
    pub launch: Duration,
    /// The agent answered its first health check (from before `launch`).
    pub agent_ready: Duration,
    /// The guest's uptime when the agent started, as the agent reports it.
    pub guest_uptime_at_agent_ms: u64,
    /// The container's output was complete (from before `launch`).
    pub output_done: Duration,
    /// What the container printed.
    pub output: String,
    /// Its exit status.
    pub exit_status: i32,
    /// The monitor process right after the agent answered.
    pub vmm: Memory,
    /// The other host processes of the VM (`role:pid:pss_kib`).
    pub helpers: Vec<String>,
    /// Further `key=value` fields (the network checks).
    pub extra: Vec<String>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RESULT requested={} backend={} launch_ms={} boot_to_agent_ms={} guest_uptime_at_agent_ms={} \
             to_container_output_ms={} exit_status={} output={:?} {} helpers={}{}",
            self.requested,
            self.backend,
            ms(self.launch),
            ms(self.agent_ready),
            self.guest_uptime_at_agent_ms,
            ms(self.output_done),
            self.exit_status,
            self.output,
            self.vmm,
            if self.helpers.is_empty() {
                "none".to_owned()
            } else {
                self.helpers.join(",")
            },
            self.extra
                .iter()
                .map(|e| format!(" {e}"))
                .collect::<String>(),
        )?;
        write!(f, "\nREASON {}", self.reason)
    }
}
