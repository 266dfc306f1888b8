//! `--io`: a pod's IO figures, as `<key>=<value>` fields of the `RESULT` line: the agent's RPC
//! round trip, a container's stdout throughput to the host, and file write and read
//! throughput on the container's virtio-fs rootfs next to the same on the host.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pod::Pod;

/// Round trips measured; the median is reported.
const RPC_ROUNDS: usize = 200;
/// Bytes a container writes to its stdout.
const STDOUT_MIB: u64 = 64;
/// Bytes of the file written and read through virtio-fs.
const FILE_MIB: u64 = 64;
const WITHIN: Duration = Duration::from_secs(300);

/// Runs every measurement; the `key=value` fields.
pub async fn bench(pod: &Pod) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut rtts = Vec::with_capacity(RPC_ROUNDS);
    for _ in 0..RPC_ROUNDS {
        let t = Instant::now();
        pod.agent().check().await.context("Check")?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    lines.push(format!(
        "rpc_rtt_us={} rpc_rtt_min_us={} rpc_rtt_max_us={}",
        rtts[rtts.len() / 2].as_micros(),
        rtts[0].as_micros(),
        rtts[rtts.len() - 1].as_micros()
    ));

    let dd = format!("dd if=/dev/zero bs=1048576 count={STDOUT_MIB} 2>/dev/null");
    let t = Instant::now();
    let (status, bytes) = pod
        .run_container_counting("io-stdout", &["sh", "-c", &dd], WITHIN)
        .await?;
    let took = t.elapsed();
    if status != 0 || bytes != STDOUT_MIB << 20 {
        bail!("the stdout container exited {status} after {bytes} bytes");
    }
    lines.push(format!("stdout_mib_s={:.1}", mib_per_s(STDOUT_MIB, took)));

    pod.start_container("io-fs", &["sleep", "1000"]).await?;
    let baseline = timed_exec(pod, "true", "true").await?;
    let write = format!("dd if=/dev/zero of=/io-file bs=1048576 count={FILE_MIB} conv=fsync");
    let took = timed_exec(pod, "write", &write).await? - baseline;
    lines.push(format!("fs_write_mib_s={:.1}", mib_per_s(FILE_MIB, took)));
    // The guest's page cache holds what it wrote; a file the host wrote into the rootfs is
    // read through virtio-fs (from virtiofsd's page cache, as the host's read below).
    let block = vec![0u8; 1 << 20];
    let fresh = (0..FILE_MIB)
        .flat_map(|_| block.iter().copied())
        .collect::<Vec<u8>>();
    std::fs::write(pod.rootfs_path("io-fs").join("io-read"), fresh)
        .context("writing the file to read into the rootfs")?;
    let took = timed_exec(pod, "read", "dd if=/io-read of=/dev/null bs=1048576").await? - baseline;
    lines.push(format!("fs_read_mib_s={:.1}", mib_per_s(FILE_MIB, took)));

    let (host_write, host_read) = host_file_throughput(pod)?;
    lines.push(format!(
        "host_write_mib_s={host_write:.1} host_read_mib_s={host_read:.1}"
    ));
    Ok(lines)
}

/// Runs `script` in the `io-fs` container; how long it took, failing unless it succeeded.
async fn timed_exec(pod: &Pod, name: &str, script: &str) -> Result<Duration> {
    let t = Instant::now();
    let (status, out) = pod
        .exec(
            "io-fs",
            &format!("io-{name}"),
            &["sh", "-c", script],
            WITHIN,
        )
        .await?;
    if status != 0 {
        bail!("{script:?} exited {status}: {out}");
    }
    Ok(t.elapsed())
}

/// The same file size written (with fsync) and read (from the page cache, as the guest's
/// read is from virtiofsd's) on the host, in the container's rootfs directory.
fn host_file_throughput(pod: &Pod) -> Result<(f64, f64)> {
    use std::io::{Read, Write};
    let path = pod.rootfs_path("io-fs").join("host-io-file");
    let block = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..FILE_MIB {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let write = mib_per_s(FILE_MIB, t.elapsed());
    let t = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    let read = mib_per_s(FILE_MIB, t.elapsed());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

fn mib_per_s(mib: u64, took: Duration) -> f64 {
    mib as f64 / took.as_secs_f64().max(1e-6)
}
