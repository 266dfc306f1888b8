//! Byte pumps between a process's stdio and its host streams.
//!
//! Output is copied in order through one bounded buffer: when the host reads slowly, the pump
//! stops reading, the pipe (or pty) fills, and the process blocks — backpressure, never
//! unbounded buffering, never dropped bytes while the host listens. If the host goes away the
//! pump keeps draining and discards, so a process is never wedged by a dead reader.

use std::time::Duration;

use slog::{Logger, debug, trace};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Bytes moved per read; also the most a pump holds at once.
pub const PUMP_BUFFER_SIZE: usize = 64 * 1024;
/// After CloseStdin, stdin keeps forwarding what the host already sent until the stream has
/// been quiet this long.
pub const STDIN_DRAIN_IDLE: Duration = Duration::from_millis(50);

/// Totals of one pump, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    pub delivered: u64,
    pub discarded: u64,
}

/// Copies `src` (process output) to `dst` (the host stream) until `src` ends, then shuts down
/// the write side of `dst`. With no `dst`, or after `dst` failed, output is drained and
/// discarded.
pub async fn pump_output<R, W>(mut src: R, mut dst: Option<W>, log: Logger) -> PumpStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUFFER_SIZE];
    let mut stats = PumpStats::default();
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(log, "reading process output failed"; "error" => %e);
                break;
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        match dst.as_mut() {
            Some(host) => match host.write_all(chunk).await {
                Ok(()) => stats.delivered += n as u64,
                Err(e) => {
                    debug!(log, "host output stream failed; discarding from now on"; "error" => %e);
                    dst = None;
                    stats.discarded += n as u64;
                }
            },
            None => stats.discarded += n as u64,
        }
        trace!(log, "output chunk"; "bytes" => n);
    }
    if let Some(mut host) = dst {
        // Flushes, then shuts down our write side: the host sees EOF after the last byte.
        if let Err(e) = host.shutdown().await {
            debug!(log, "shutting down host output stream failed"; "error" => %e);
        }
    }
    debug!(log, "output ended"; "delivered" => stats.delivered, "discarded" => stats.discarded);
    stats
}

/// Copies `src` (the host stream) into `dst` (the process's stdin) until the host ends the
/// stream, the process stops reading, or `close` fires (CloseStdin). `dst` is dropped at the
/// end, which closes the process's stdin.
pub async fn pump_input<R, W>(
    mut src: R,
    mut dst: W,
    mut close: oneshot::Receiver<()>,
    log: Logger,
) -> PumpStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUFFER_SIZE];
    let mut stats = PumpStats::default();
    let mut closing = false;
    loop {
        let read = if closing {
            match tokio::time::timeout(STDIN_DRAIN_IDLE, src.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                biased;
                read = src.read(&mut buf) => read,
                // A dropped sender (process record gone) closes stdin as well.
                _ = &mut close => { closing = true; continue; }
            }
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(log, "reading host stdin stream failed"; "error" => %e);
                break;
            }
        };
        if let Err(e) = dst.write_all(buf.get(..n).unwrap_or_default()).await {
            // EPIPE: the process closed its stdin or exited.
            debug!(log, "process stopped reading stdin"; "error" => %e);
            stats.discarded += n as u64;
            break;
        }
        stats.delivered += n as u64;
    }
    let _ = dst.flush().await;
    debug!(log, "stdin ended"; "delivered" => stats.delivered, "closed_by_rpc" => closing);
    stats
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn output_arrives_complete_and_in_order_through_a_slow_reader() {
        let data = pattern(3 * PUMP_BUFFER_SIZE + 123);
        let (mut proc_side, pump_src) = duplex(4096);
        let (pump_dst, mut host) = duplex(1024); // small: the pump must wait for the host
        let pump = tokio::spawn(pump_output(pump_src, Some(pump_dst), log()));
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                proc_side.write_all(&data).await.unwrap();
            })
        };
        let mut got = Vec::new();
        host.read_to_end(&mut got).await.unwrap(); // ends at the pump's shutdown
        writer.await.unwrap();
        assert_eq!(got, data);
        assert_eq!(pump.await.unwrap().delivered, data.len() as u64);
    }

    #[tokio::test]
    async fn output_is_drained_when_the_host_is_gone() {
        let (mut proc_side, pump_src) = duplex(4096);
        let (pump_dst, host) = duplex(16);
        drop(host);
        let pump = tokio::spawn(pump_output(pump_src, Some(pump_dst), log()));
        proc_side.write_all(&pattern(100_000)).await.unwrap();
        drop(proc_side);
        let stats = pump.await.unwrap();
        assert_eq!(stats.delivered + stats.discarded, 100_000);
        assert!(stats.discarded > 0);
    }

    #[tokio::test]
    async fn input_ends_at_host_eof() {
        let (mut host, pump_src) = duplex(64);
        let (pump_dst, mut proc_side) = duplex(64);
        let (_close_tx, close_rx) = oneshot::channel();
        let pump = tokio::spawn(pump_input(pump_src, pump_dst, close_rx, log()));
        host.write_all(b"hello").await.unwrap();
        drop(host);
        let mut got = Vec::new();
        proc_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(pump.await.unwrap().delivered, 5);
    }

    #[tokio::test]
    async fn close_stdin_delivers_what_arrived_then_closes() {
        let (mut host, pump_src) = duplex(64);
        let (pump_dst, mut proc_side) = duplex(64);
        let (close_tx, close_rx) = oneshot::channel();
        host.write_all(b"before close").await.unwrap();
        let pump = tokio::spawn(pump_input(pump_src, pump_dst, close_rx, log()));
        close_tx.send(()).unwrap();
        let mut got = Vec::new();
        // The host keeps its stream open: only CloseStdin can end the process's stdin.
        proc_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"before close");
        pump.await.unwrap();
        drop(host);
    }
}
