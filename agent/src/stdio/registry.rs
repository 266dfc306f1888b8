//! Streams the host attached on the IO port that no process has claimed yet.
//!
//! The shim attaches every stream a process will have *before* asking for the process, so a
//! stream waits here, keyed by (container, exec, kind), until CreateContainer / ExecProcess
//! claims it. The registry is bounded in size, and streams nobody claims expire.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use husk_protocol::io_stream::{StreamHeader, StreamKind};
use thiserror::Error;

/// At most this many streams wait unclaimed (a pod rarely has more than a few in flight).
pub const MAX_UNCLAIMED_STREAMS: usize = 64;
/// An unclaimed stream is dropped after this long: its process was never created.
pub const UNCLAIMED_STREAM_TTL: Duration = Duration::from_secs(120);

/// Names one stdio stream of one process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub kind: StreamKind,
}

impl From<StreamHeader> for StreamKey {
    fn from(h: StreamHeader) -> Self {
        Self {
            container_id: h.container_id,
            exec_id: h.exec_id,
            kind: h.kind,
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        };
        if self.exec_id.is_empty() {
            write!(f, "{kind} of container {}", self.container_id)
        } else {
            write!(
                f,
                "{kind} of exec {} in container {}",
                self.exec_id, self.container_id
            )
        }
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("the {0} is already attached")]
    AlreadyAttached(StreamKey),
    #[error("{MAX_UNCLAIMED_STREAMS} streams are already waiting to be claimed")]
    Full,
    #[error("acknowledging the {key}: {source}")]
    Acknowledge { key: StreamKey, source: io::Error },
    #[error("the {0} was requested but is not attached")]
    NotAttached(StreamKey),
}

/// A refused attachment: the error and the stream, so the caller can tell the host why.
pub struct Refused<S> {
    pub error: RegistryError,
    pub stream: S,
}

/// Streams claimed for one process; `None` where the process gets /dev/null.
#[derive(Debug)]
pub struct ClaimedStreams<S> {
    pub stdin: Option<S>,
    pub stdout: Option<S>,
    pub stderr: Option<S>,
}

impl<S> Default for ClaimedStreams<S> {
    fn default() -> Self {
        Self {
            stdin: None,
            stdout: None,
            stderr: None,
        }
    }
}

struct Unclaimed<S> {
    stream: S,
    attached_at: Instant,
}

pub struct StreamRegistry<S> {
    streams: Mutex<HashMap<StreamKey, Unclaimed<S>>>,
    capacity: usize,
    ttl: Duration,
}

impl<S> Default for StreamRegistry<S> {
    fn default() -> Self {
        Self::new(MAX_UNCLAIMED_STREAMS, UNCLAIMED_STREAM_TTL)
    }
}

impl<S> StreamRegistry<S> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            capacity,
            ttl,
        }
    }

    fn lock(&self, now: Instant) -> MutexGuard<'_, HashMap<StreamKey, Unclaimed<S>>> {
        // Each update is a single map operation, so a poisoned map is still consistent.
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl = self.ttl;
        streams.retain(|_, u| now.saturating_duration_since(u.attached_at) < ttl);
        streams
    }

    /// Registers `stream` under `key`. `acknowledge` runs under the registry lock right before
    /// the stream becomes claimable: it must tell the host "attached" without blocking, so the
    /// host can never see the acknowledgement before a claim could find the stream.
    pub fn attach(
        &self,
        key: StreamKey,
        mut stream: S,
        now: Instant,
        acknowledge: impl FnOnce(&mut S) -> io::Result<()>,
    ) -> Result<(), Refused<S>> {
        let mut streams = self.lock(now);
        if streams.contains_key(&key) {
            return Err(Refused {
                error: RegistryError::AlreadyAttached(key),
                stream,
            });
        }
        if streams.len() >= self.capacity {
            return Err(Refused {
                error: RegistryError::Full,
                stream,
            });
        }
        if let Err(source) = acknowledge(&mut stream) {
            return Err(Refused {
                error: RegistryError::Acknowledge { key, source },
                stream,
            });
        }
        streams.insert(
            key,
            Unclaimed {
                stream,
                attached_at: now,
            },
        );
        Ok(())
    }

    /// Takes the streams of `kinds` for one process: all of them, or (when one is missing)
    /// none, leaving the registry unchanged.
    pub fn claim(
        &self,
        container_id: &str,
        exec_id: &str,
        kinds: &[StreamKind],
        now: Instant,
    ) -> Result<ClaimedStreams<S>, RegistryError> {
        let key = |kind| StreamKey {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            kind,
        };
        let mut streams = self.lock(now);
        if let Some(missing) = kinds
            .iter()
            .map(|k| key(*k))
            .find(|k| !streams.contains_key(k))
        {
            return Err(RegistryError::NotAttached(missing));
        }
        let mut claimed = ClaimedStreams::default();
        for kind in kinds {
            let stream = streams.remove(&key(*kind)).map(|u| u.stream);
            match kind {
                StreamKind::Stdin => claimed.stdin = stream,
                StreamKind::Stdout => claimed.stdout = stream,
                StreamKind::Stderr => claimed.stderr = stream,
            }
        }
        Ok(claimed)
    }

    /// Drops every unclaimed stream of a container (it is being removed); returns how many.
    pub fn discard_container(&self, container_id: &str, now: Instant) -> usize {
        let mut streams = self.lock(now);
        let before = streams.len();
        streams.retain(|k, _| k.container_id != container_id);
        before - streams.len()
    }

    pub fn len(&self, now: Instant) -> usize {
        self.lock(now).len()
    }

    pub fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, e: &str, kind: StreamKind) -> StreamKey {
        StreamKey {
            container_id: c.into(),
            exec_id: e.into(),
            kind,
        }
    }

    fn ok(_: &mut u32) -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn claims_what_was_attached() {
        let reg = StreamRegistry::default();
        let now = Instant::now();
        reg.attach(key("c", "", StreamKind::Stdout), 1u32, now, ok)
            .ok()
            .unwrap();
        reg.attach(key("c", "", StreamKind::Stdin), 2u32, now, ok)
            .ok()
            .unwrap();
        reg.attach(key("c", "e1", StreamKind::Stdout), 3u32, now, ok)
            .ok()
            .unwrap();

        let claimed = reg
            .claim("c", "", &[StreamKind::Stdin, StreamKind::Stdout], now)
            .unwrap();
        assert_eq!(
            (claimed.stdin, claimed.stdout, claimed.stderr),
            (Some(2), Some(1), None)
        );
        assert_eq!(reg.len(now), 1);
    }

    #[test]
    fn claim_is_all_or_nothing() {
        let reg = StreamRegistry::default();
        let now = Instant::now();
        reg.attach(key("c", "", StreamKind::Stdout), 1u32, now, ok)
            .ok()
            .unwrap();
        let err = reg
            .claim("c", "", &[StreamKind::Stdout, StreamKind::Stderr], now)
            .unwrap_err();
        assert!(matches!(err, RegistryError::NotAttached(k) if k.kind == StreamKind::Stderr));
        assert_eq!(reg.len(now), 1, "stdout must still be there for a retry");
    }

    #[test]
    fn refuses_duplicates_and_overflow() {
        let reg = StreamRegistry::new(2, UNCLAIMED_STREAM_TTL);
        let now = Instant::now();
        reg.attach(key("c", "", StreamKind::Stdout), 1u32, now, ok)
            .ok()
            .unwrap();
        let dup = reg
            .attach(key("c", "", StreamKind::Stdout), 2u32, now, ok)
            .err()
            .unwrap();
        assert!(matches!(dup.error, RegistryError::AlreadyAttached(_)));
        assert_eq!(dup.stream, 2);
        reg.attach(key("c", "", StreamKind::Stderr), 3u32, now, ok)
            .ok()
            .unwrap();
        let full = reg
            .attach(key("d", "", StreamKind::Stdout), 4u32, now, ok)
            .err()
            .unwrap();
        assert!(matches!(full.error, RegistryError::Full));
    }

    #[test]
    fn failed_acknowledgement_does_not_register() {
        let reg = StreamRegistry::default();
        let now = Instant::now();
        let refused = reg
            .attach(key("c", "", StreamKind::Stdout), 1u32, now, |_| {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            })
            .err()
            .unwrap();
        assert!(matches!(refused.error, RegistryError::Acknowledge { .. }));
        assert!(reg.is_empty(now));
    }

    #[test]
    fn unclaimed_streams_expire() {
        let reg = StreamRegistry::new(4, Duration::from_secs(10));
        let start = Instant::now();
        reg.attach(key("c", "", StreamKind::Stdout), 1u32, start, ok)
            .ok()
            .unwrap();
        assert_eq!(reg.len(start + Duration::from_secs(9)), 1);
        assert_eq!(reg.len(start + Duration::from_secs(10)), 0);
        assert!(
            reg.claim(
                "c",
                "",
                &[StreamKind::Stdout],
                start + Duration::from_secs(11)
            )
            .is_err()
        );
    }

    #[test]
    fn discards_a_containers_streams() {
        let reg = StreamRegistry::default();
        let now = Instant::now();
        reg.attach(key("c", "", StreamKind::Stdout), 1u32, now, ok)
            .ok()
            .unwrap();
        reg.attach(key("c", "e", StreamKind::Stdin), 2u32, now, ok)
            .ok()
            .unwrap();
        reg.attach(key("d", "", StreamKind::Stdout), 3u32, now, ok)
            .ok()
            .unwrap();
        assert_eq!(reg.discard_container("c", now), 2);
        assert_eq!(reg.len(now), 1);
    }

    #[test]
    fn keys_describe_themselves() {
        assert_eq!(
            key("c", "", StreamKind::Stdin).to_string(),
            "stdin of container c"
        );
        assert_eq!(
            key("c", "e", StreamKind::Stderr).to_string(),
            "stderr of exec e in container c"
        );
    }
}
