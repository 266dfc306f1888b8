//! A per-input time limit that holds whatever flags the fuzzer runs with: a device loop that
//! spins on a corrupt ring must show up as a failing input, not as a slow fuzzer.
//! (libFuzzer's own `-timeout` is 1200 s unless given.)

/// Seconds one input may take; far above any honest input (milliseconds).
const SECONDS: u32 = 5;

/// Arms `SIGALRM` for this input; the default action kills the process, and libFuzzer saves
/// the input as a crash. Disarmed on drop.
pub struct Deadline;

impl Deadline {
    pub fn arm() -> Self {
        // SAFETY: alarm(2) takes a number and touches no memory.
        unsafe { libc::alarm(SECONDS) };
        Deadline
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // SAFETY: as above; 0 cancels the pending alarm.
        unsafe { libc::alarm(0) };
    }
}
