//! Credit-based flow control of one connection, both directions (virtio spec 5.10.6.3).
//!
//! Guest → host: we advertise [`HOST_BUF_ALLOC`] bytes; the guest may have at most that many
//! bytes "in flight" (sent by it, not yet forwarded by us to the host socket). A guest that sends
//! more is breaking the protocol and its connection is reset, so the per-connection host buffer
//! can never grow past `HOST_BUF_ALLOC`.
//!
//! Host → guest: the guest advertises its own `buf_alloc`/`fwd_cnt` in every packet; we never
//! read more from the host socket than the guest has room for.
//!
//! All counters are free-running `u32`s that wrap, as in the spec.

use std::num::Wrapping;

/// Guest → host bytes we accept per connection before the guest has to wait for credit.
/// 256 KiB (Firecracker's value too) keeps a 64 KiB-packet sender streaming while bounding the
/// worst-case host memory to 256 KiB per connection.
pub const HOST_BUF_ALLOC: u32 = 256 * 1024;

/// Send an unsolicited credit update once the guest believes it has less than this much room
/// left: half the window, so the update arrives before a streaming guest runs dry.
pub const CREDIT_UPDATE_THRESHOLD: u32 = HOST_BUF_ALLOC / 2;

/// The guest sent more bytes than it had credit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "guest overran its credit: {buffered} bytes buffered, {incoming} more sent, window {window}"
)]
pub struct CreditViolation {
    pub buffered: u32,
    pub incoming: u32,
    pub window: u32,
}

/// Flow-control counters of one connection.
#[derive(Debug, Default, Clone)]
pub struct Credit {
    /// Guest → host bytes received from the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest → host bytes written to the host socket (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last saw from us.
    reported_fwd_cnt: Wrapping<u32>,
    /// Host → guest bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// The guest's receive window, from its latest packet.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed, from its latest packet.
    peer_fwd_cnt: Wrapping<u32>,
}

impl Credit {
    /// Records the guest's `buf_alloc`/`fwd_cnt` (every guest packet carries them).
    pub fn update_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes we may still send to the guest. A guest reporting a `fwd_cnt` ahead of what we sent
    /// makes the in-flight count wrap to a huge value and this saturate to 0: hostile input
    /// stops the flow instead of opening it.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records `n` bytes sent to the guest.
    pub fn on_sent_to_guest(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Bytes received from the guest and not yet forwarded to the host.
    pub fn buffered(&self) -> u32 {
        (self.rx_cnt - self.fwd_cnt).0
    }

    /// Accounts for `n` bytes arriving from the guest, refusing them if they exceed the window.
    pub fn accept_from_guest(&mut self, n: u32) -> Result<(), CreditViolation> {
        let buffered = self.buffered();
        if u64::from(buffered) + u64::from(n) > u64::from(HOST_BUF_ALLOC) {
            return Err(CreditViolation {
                buffered,
                incoming: n,
                window: HOST_BUF_ALLOC,
            });
        }
        self.rx_cnt += Wrapping(n);
        Ok(())
    }

    /// Records `n` bytes written to the host socket.
    pub fn on_forwarded_to_host(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// `(buf_alloc, fwd_cnt)` for a header going to the guest; the guest learns our `fwd_cnt`
    /// from any packet, so each one counts as a credit update.
    pub fn stamp(&mut self) -> (u32, u32) {
        self.reported_fwd_cnt = self.fwd_cnt;
        (HOST_BUF_ALLOC, self.fwd_cnt.0)
    }

    /// Whether the guest should be told about freed space now: it thinks it is close to running
    /// out, and we have freed something since we last told it.
    pub fn needs_update(&self) -> bool {
        let guest_view_in_flight = (self.rx_cnt - self.reported_fwd_cnt).0;
        let guest_view_free = HOST_BUF_ALLOC.saturating_sub(guest_view_in_flight);
        guest_view_free < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.reported_fwd_cnt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_follows_the_guest_window() {
        let mut c = Credit::default();
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest announced a window"
        );
        c.update_peer(4096, 0);
        assert_eq!(c.peer_credit(), 4096);
        c.on_sent_to_guest(4000);
        assert_eq!(c.peer_credit(), 96);
        c.on_sent_to_guest(96);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer(4096, 1000);
        assert_eq!(c.peer_credit(), 1000);
    }

    #[test]
    fn peer_credit_handles_counter_wraparound() {
        let mut c = Credit {
            tx_cnt: Wrapping(u32::MAX - 10),
            ..Credit::default()
        };
        c.update_peer(100, u32::MAX - 10);
        c.on_sent_to_guest(50); // wraps past zero
        assert_eq!(c.peer_credit(), 50);
    }

    #[test]
    fn hostile_fwd_cnt_ahead_of_sent_bytes_gives_no_credit() {
        let mut c = Credit::default();
        c.on_sent_to_guest(10);
        c.update_peer(HOST_BUF_ALLOC, 1_000_000);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_may_fill_but_not_overrun_the_window() {
        let mut c = Credit::default();
        c.accept_from_guest(HOST_BUF_ALLOC - 1).unwrap();
        c.accept_from_guest(1).unwrap();
        let err = c.accept_from_guest(1).unwrap_err();
        assert_eq!(err.buffered, HOST_BUF_ALLOC);
        c.on_forwarded_to_host(10);
        c.accept_from_guest(10).unwrap();
        assert_eq!(c.buffered(), HOST_BUF_ALLOC);
        assert!(c.accept_from_guest(u32::MAX).is_err());
    }

    #[test]
    fn credit_update_is_needed_only_when_the_guest_runs_low_and_space_was_freed() {
        let mut c = Credit::default();
        c.accept_from_guest(CREDIT_UPDATE_THRESHOLD).unwrap();
        c.on_forwarded_to_host(CREDIT_UPDATE_THRESHOLD);
        assert!(!c.needs_update(), "guest still has half the window");
        c.accept_from_guest(1).unwrap();
        assert!(
            c.needs_update(),
            "guest below the threshold and we freed space"
        );
        let (buf_alloc, fwd_cnt) = c.stamp();
        assert_eq!(
            (buf_alloc, fwd_cnt),
            (HOST_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD)
        );
        assert!(!c.needs_update(), "the stamped header told the guest");
    }

    #[test]
    fn no_credit_update_when_nothing_was_forwarded() {
        let mut c = Credit::default();
        c.accept_from_guest(HOST_BUF_ALLOC).unwrap();
        assert!(
            !c.needs_update(),
            "an update would not give the guest any room"
        );
    }
}
