//! Host side of the hybrid vsock: reach guest port P through the VM's Unix socket.
//!
//! Protocol (Firecracker's): connect to the socket, write `CONNECT <P>\n`, read one line that
//! starts with `OK` (e.g. `OK 1073741824\n`); from then on the stream carries raw bytes. The
//! device closes the socket when the guest refuses or has no listener yet, so callers retry
//! until their own deadline ([`connect_with_retry`]).

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The reply line is `OK <port>\n`; anything longer is not a reply we understand.
const MAX_REPLY_LEN: usize = 64;
/// First pause between attempts; doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Small: the agent usually comes up while this waits, and every ms of the pause is a ms of
/// pod start (measured in `cargo xtask bench`: with 200 ms, the host noticed the serving
/// agent 48 ms late in the median, up to 160 ms). An attempt costs the guest one refused
/// vsock connection.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum HybridConnectError {
    #[error("connecting to hybrid vsock socket {path:?}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("vsock handshake for guest port {port}: {source}")]
    Io { port: u32, source: std::io::Error },
    #[error("guest port {port} refused the connection (no listener yet?)")]
    Refused { port: u32 },
    #[error("unexpected handshake reply for guest port {port}: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("no connection to guest port {port} within {waited:?}; last error: {last}")]
    Deadline {
        port: u32,
        waited: Duration,
        last: String,
    },
}

/// One attempt: connect and handshake, bounded by `timeout`.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HybridConnectError> {
    let attempt = async {
        let mut stream =
            UnixStream::connect(uds)
                .await
                .map_err(|source| HybridConnectError::Connect {
                    path: uds.display().to_string(),
                    source,
                })?;
        let io = |source| HybridConnectError::Io { port, source };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(io)?;
        // Byte by byte: the guest's first bytes may follow the reply in the same segment.
        let mut reply = Vec::with_capacity(MAX_REPLY_LEN);
        loop {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await.map_err(io)? == 0 {
                return Err(HybridConnectError::Refused { port });
            }
            if b[0] == b'\n' {
                break;
            }
            if reply.len() == MAX_REPLY_LEN {
                return Err(bad_reply(port, &reply));
            }
            reply.push(b[0]);
        }
        if reply.starts_with(b"OK") {
            Ok(stream)
        } else {
            Err(bad_reply(port, &reply))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(HybridConnectError::Io {
            port,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
        }),
    }
}

/// Retries [`connect`] with backoff until `deadline` (the agent may still be booting).
/// `give_up` is polled between attempts so callers can stop early, e.g. when the VM died.
pub async fn connect_with_retry(
    uds: &Path,
    port: u32,
    deadline: Instant,
    mut give_up: impl FnMut() -> Option<String>,
) -> Result<UnixStream, HybridConnectError> {
    let started = Instant::now();
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match connect(uds, port, left.max(Duration::from_millis(1))).await {
            Ok(s) => return Ok(s),
            Err(e) => e.to_string(),
        };
        if let Some(reason) = give_up() {
            return Err(HybridConnectError::Deadline {
                port,
                waited: started.elapsed(),
                last: reason,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HybridConnectError::Deadline {
                port,
                waited: started.elapsed(),
                last,
            });
        }
        // The last attempt happens at the deadline, not a pause before it.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
}

fn bad_reply(port: u32, reply: &[u8]) -> HybridConnectError {
    HybridConnectError::BadReply {
        port,
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake device: answers CONNECT lines with `reply` and then echoes.
    fn fake_device(path: &Path, reply: &'static [u8]) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut s = tokio::io::BufReader::new(s);
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    assert!(line.starts_with("CONNECT "));
                    s.get_mut().write_all(reply).await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.get_mut().write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn handshake_then_raw_bytes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.sock");
        // Reply and first payload bytes in one write: the client must not swallow them.
        fake_device(&path, b"OK 1073741824\nhello");
        let mut s = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn rejects_garbage_and_overlong_replies() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.sock");
        fake_device(&path, b"NO\n");
        assert!(matches!(
            connect(&path, 1, Duration::from_secs(5)).await,
            Err(HybridConnectError::BadReply { .. })
        ));
        let path = d.path().join("b.sock");
        fake_device(&path, &[b'O'; 200]);
        assert!(matches!(
            connect(&path, 1, Duration::from_secs(5)).await,
            Err(HybridConnectError::BadReply { .. })
        ));
    }

    #[tokio::test]
    async fn retry_stops_at_deadline_and_on_give_up() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("missing.sock");
        let start = Instant::now();
        let err = connect_with_retry(
            &path,
            1024,
            Instant::now() + Duration::from_millis(300),
            || None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HybridConnectError::Deadline { .. }));
        assert!(start.elapsed() < Duration::from_secs(5));
        let err = connect_with_retry(
            &path,
            1024,
            Instant::now() + Duration::from_secs(60),
            || Some("vm died".to_string()),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("vm died"));
    }
}
