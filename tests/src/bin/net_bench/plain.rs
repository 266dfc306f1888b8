//! A plain network namespace with a veth on the test's bridge: a host on the pod network,
//! for the floor measurements and as the "host" end of host → pod.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

/// How long a sink may take to (re)start listening.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

pub struct PlainNs {
    name: String,
}

/// A process group started in a namespace, killed on drop.
pub struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

impl PlainNs {
    pub fn attach(bridge: &str, address: &str, tag: &str) -> Result<Self> {
        let name = format!("husk-nb-{tag}-{}", std::process::id());
        let host_end = format!("nb{tag}{}", std::process::id() % 100_000);
        let ns = Self { name };
        let n = ns.name.as_str();
        for args in [
            format!("netns add {n}"),
            format!("link add {host_end} type veth peer name eth0 netns {n}"),
            format!("link set {host_end} master {bridge} up"),
            format!("-n {n} addr add {address} dev eth0"),
            format!("-n {n} link set eth0 up"),
            format!("-n {n} link set lo up"),
        ] {
            let out = Command::new("ip").args(args.split_whitespace()).output()?;
            ensure!(
                out.status.success(),
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ns)
    }

    fn exec_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "busybox"])
            .args(args);
        cmd
    }

    /// Runs busybox `args` in the namespace in the background (its own process group).
    pub fn spawn_busybox(&self, args: &[&str]) -> Result<Spawned> {
        let child = self
            .exec_command(args)
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .context("starting busybox in a plain namespace")?;
        Ok(Spawned(child))
    }

    /// Runs busybox `args` in the namespace; its stdout.
    pub fn busybox<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.exec_command(args).output()?;
        ensure!(
            out.status.success(),
            "busybox {:?}: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pushes `mib` MiB to `ip:port` from inside the namespace; MiB/s from connect until
    /// the sink closes (it has read everything by then).
    pub fn push(&self, ip: &str, port: u16, mib: u64) -> Result<f64> {
        let netns = File::open(format!("/run/netns/{}", self.name))?;
        let to: SocketAddr = format!("{ip}:{port}").parse()?;
        std::thread::spawn(move || -> Result<f64> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
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
            let chunks = mib * 1024 * 1024 / CHUNK as u64;
            for _ in 0..chunks {
                s.write_all(&chunk)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?;
            Ok(mib as f64 / started.elapsed().as_secs_f64())
        })
        .join()
        .map_err(|_| anyhow!("the pushing thread panicked"))?
    }
}

impl Drop for PlainNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
