//! How husk-vmm's exit status reads.

use crate::child::describe;
use husk_vmm_config::{
    EXIT_GUEST_CRASHED, EXIT_GUEST_STOPPED, EXIT_SETUP_FAILED, EXIT_VCPU_FAILED,
};

/// The monitor's exit status in words.
pub(super) fn describe_status(status: std::process::ExitStatus) -> String {
    let meaning = match status.code() {
        Some(EXIT_GUEST_STOPPED) => "the guest stopped",
        Some(EXIT_SETUP_FAILED) => "the VM could not be started",
        Some(EXIT_VCPU_FAILED) => "KVM failed while running the guest",
        Some(EXIT_GUEST_CRASHED) => "the guest crashed",
        Some(_) => "unexpected status",
        None => "the monitor was killed",
    };
    format!("husk-vmm {} ({meaning})", describe(status))
}
