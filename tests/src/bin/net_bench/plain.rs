//! The host end of the throughput measurements: a client in a plain namespace
//! ([`PlainNs`]) pushing bytes to a sink.

use std::net::SocketAddr;

use anyhow::Result;
use husk_tests::PlainNs;
use husk_tests::netperf;

/// Pushes `mib` MiB to `ip:port` from inside `ns`; MiB/s from connect until the sink closes.
pub fn push(ns: &PlainNs, ip: &str, port: u16, mib: u64) -> Result<f64> {
    let to: SocketAddr = format!("{ip}:{port}").parse()?;
    ns.run(move || netperf::push(to, mib).map(|p| p.mib_per_s))
}
