//! The measuring ends of the network benchmarks (`net_bench` through CRI, `nested_pod`
//! under nested KVM): a TCP client that pushes a payload to a counting sink, and busybox
//! ping's summary. The sinks are busybox `nc -ll -e …`, which read each connection to its
//! end; a run counts only if the sink saw the whole payload.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

pub use crate::net_figures::{PathFigures, Ping, TABLE_HEADER};

/// How long a sink may take to (re)start listening.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// Bound on the sink's answer once everything was sent.
const REPLY_WITHIN: Duration = Duration::from_secs(120);
const CHUNK: usize = 64 * 1024;

/// What one push measured.
#[derive(Debug)]
pub struct Pushed {
    /// MiB/s from connect until the sink closed (it has read everything by then).
    pub mib_per_s: f64,
    /// What the sink wrote back (a `wc -c` sink: the byte count it read).
    pub reply: String,
}

/// Pushes `mib` MiB to `to` from the calling thread's network namespace, then half-closes
/// and reads the sink's reply until it closes.
pub fn push(to: SocketAddr, mib: u64) -> Result<Pushed> {
    let deadline = Instant::now() + CONNECT_WITHIN;
    let mut s = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => bail!("connecting to {to}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let started = Instant::now();
    s.set_read_timeout(Some(REPLY_WITHIN))?;
    s.set_write_timeout(Some(REPLY_WITHIN))?;
    let chunk = vec![0u8; CHUNK];
    for _ in 0..mib * 1024 * 1024 / CHUNK as u64 {
        s.write_all(&chunk)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    s.take(4096).read_to_end(&mut reply)?;
    Ok(Pushed {
        mib_per_s: mib as f64 / started.elapsed().as_secs_f64(),
        reply: String::from_utf8_lossy(&reply).trim().to_owned(),
    })
}

/// A successful `GET /`: the reply, and how long that request took.
#[derive(Debug)]
pub struct Fetched {
    pub reply: String,
    pub took: Duration,
}

/// `GET /` (HTTP/1.0) to `address` from the calling thread's network namespace, retried
/// until an answer that starts `HTTP/1.` comes or `within` has passed.
pub fn http_get(address: SocketAddr, within: Duration) -> Result<Fetched> {
    let deadline = Instant::now() + within;
    loop {
        let started = Instant::now();
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = Vec::new();
            s.take(1 << 20).read_to_end(&mut reply)?;
            Ok(String::from_utf8_lossy(&reply).into_owned())
        };
        match attempt() {
            Ok(reply) if reply.starts_with("HTTP/1.") => {
                return Ok(Fetched {
                    reply,
                    took: started.elapsed(),
                });
            }
            other if Instant::now() > deadline => {
                bail!("no HTTP answer from {address} within {within:?}: {other:?}");
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Checks that a `wc -c` sink counted `mib` MiB.
pub fn check_count(reply: &str, mib: u64) -> Result<()> {
    let got: u64 = reply
        .trim()
        .parse()
        .map_err(|_| anyhow!("the sink answered {reply:?}, not a byte count"))?;
    if got != mib << 20 {
        bail!("the sink got {got} bytes of {}", mib << 20);
    }
    Ok(())
}

/// busybox `ping` arguments: `count` quiet pings 0.2 s apart.
pub fn ping_args(to: &str, count: u32) -> Vec<String> {
    ["ping", "-q", "-c", &count.to_string(), "-i", "0.2", to]
        .map(str::to_owned)
        .to_vec()
}

/// `round-trip min/avg/max = 0.1/0.2/0.3 ms` → its three figures.
pub fn parse_ping(output: &str) -> Result<Ping> {
    let line = output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| anyhow!("no round-trip summary in ping's output: {output:?}"))?;
    let numbers: Vec<f64> = line
        .split('=')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .trim_end_matches("ms")
        .split('/')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    match numbers[..] {
        [min, avg, max, ..] => Ok(Ping { min, avg, max }),
        _ => bail!("unreadable ping summary {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_read() {
        let p = parse_ping("3 packets\nround-trip min/avg/max = 0.120/0.149/0.339 ms\n").unwrap();
        assert_eq!((p.min, p.avg, p.max), (0.120, 0.149, 0.339));
        assert!(parse_ping("100% packet loss").is_err());
    }

    #[test]
    fn counts_must_match_the_payload() {
        assert!(check_count("67108864\n", 64).is_ok());
        assert!(check_count("2048", 64).is_err());
        assert!(check_count("oops", 64).is_err());
    }
}
