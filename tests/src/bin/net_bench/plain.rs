//! The host end of the throughput measurements: a client in a plain namespace
//! ([`PlainNs`]) pushing bytes to a sink.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use husk_tests::cri::PlainNs;

/// How long a sink may take to (re)start listening.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

/// Pushes `mib` MiB to `ip:port` from inside `ns`; MiB/s from connect until the sink closes
/// (it has read everything by then).
pub fn push(ns: &PlainNs, ip: &str, port: u16, mib: u64) -> Result<f64> {
    let to: SocketAddr = format!("{ip}:{port}").parse()?;
    ns.run(move || {
        let deadline = Instant::now() + CONNECT_WITHIN;
        let mut s = loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => bail!("connecting to {to}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let chunk = vec![0u8; CHUNK];
        for _ in 0..mib * 1024 * 1024 / CHUNK as u64 {
            s.write_all(&chunk)?;
        }
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(mib as f64 / started.elapsed().as_secs_f64())
    })
}
