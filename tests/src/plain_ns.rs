//! A plain network namespace with a veth on a test's bridge: a host on the pod network
//! that is not a pod, for clients and servers next to husk pods and for the floor of the
//! network benchmarks, and a pod's namespace where no CNI runs (the nested test host). Set
//! up with `ip`; removed (with its veth) on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, anyhow, ensure};

/// The namespace `husk-pn-<tag>`, its `eth0` on the bridge.
#[derive(Debug)]
pub struct PlainNs {
    name: String,
}

/// A process group started in a namespace, killed on drop.
#[derive(Debug)]
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

/// Runs `ip` with `args` (split at spaces); its error output on failure.
pub fn ip(args: &str) -> Result<()> {
    let out = Command::new("ip").args(args.split_whitespace()).output()?;
    ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl PlainNs {
    /// Creates the namespace with `address` (CIDR) on an `eth0` whose peer joins `bridge`.
    /// `tag` (at most 8 characters are used) tells namespaces of one test apart.
    pub fn attach(bridge: &str, address: &str, tag: &str) -> Result<Self> {
        let ns = Self::empty(tag)?;
        let host_end = format!("pn{}", &ns.name["husk-pn-".len()..]);
        ip(&format!(
            "link add {host_end} type veth peer name eth0 netns {}",
            ns.name
        ))?;
        ip(&format!("link set {host_end} master {bridge} up"))?;
        for args in [
            format!("addr add {address} dev eth0"),
            "link set eth0 up".to_owned(),
            "link set lo up".to_owned(),
        ] {
            ns.ip(&args)?;
        }
        Ok(ns)
    }

    /// Creates the namespace `husk-pn-<tag>` with nothing but its `lo` (down), for a test
    /// to fill with [`Self::ip`]. `tag`: at most its last 8 characters are used.
    pub fn empty(tag: &str) -> Result<Self> {
        let tag = &tag[tag.len().saturating_sub(8)..];
        let name = format!("husk-pn-{tag}");
        ip(&format!("netns add {name}"))?;
        Ok(Self { name })
    }

    /// Runs `ip` with `args` (split at spaces) inside the namespace.
    pub fn ip(&self, args: &str) -> Result<()> {
        ip(&format!("-n {} {args}", self.name))
    }

    /// The namespace's path, as CNI would give it to a sandbox.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespace's name (`ip -n <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Routes everything off the bridge's subnet through `gateway`, as CNI's bridge plugin
    /// does for a pod.
    pub fn add_default_route(&self, gateway: &str) -> Result<()> {
        self.ip(&format!("route add default via {gateway}"))
    }

    /// What husk could have left here: its taps and ingress qdiscs (empty if nothing).
    pub fn husk_leftovers(&self) -> Result<String> {
        let name = self.name.as_str();
        let links = Command::new("ip")
            .args(["-n", name, "-o", "link"])
            .output()?;
        let qdiscs = Command::new("ip")
            .args(["netns", "exec", name, "tc", "qdisc", "show"])
            .output()?;
        ensure!(
            links.status.success() && qdiscs.status.success(),
            "listing namespace {name}: {}{}",
            String::from_utf8_lossy(&links.stderr),
            String::from_utf8_lossy(&qdiscs.stderr)
        );
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        let qdiscs = String::from_utf8_lossy(&qdiscs.stdout).into_owned();
        Ok(links
            .lines()
            .chain(qdiscs.lines())
            .filter(|l| l.contains("husk") || l.contains("ingress"))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Adds IPv6 address `cidr` to `eth0`, usable at once (no duplicate detection).
    pub fn add_ipv6(&self, cidr: &str) -> Result<()> {
        self.ip(&format!("-6 addr add {cidr} dev eth0 nodad"))
    }

    /// Runs `f` on a thread of its own inside the namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let netns = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        Ok(std::thread::spawn(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        }))
    }

    /// [`Self::run_in`], waiting for the result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run_in(f)?
            .join()
            .map_err(|_| anyhow!("the thread in namespace {} panicked", self.name))?
    }

    fn busybox_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "busybox"])
            .args(args);
        cmd
    }

    /// Runs busybox `args` in the namespace in the background (its own process group).
    pub fn spawn_busybox<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Spawned> {
        let child = self
            .busybox_command(args)
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .context("starting busybox in a plain namespace")?;
        Ok(Spawned(child))
    }

    /// Runs busybox `args` in the namespace; its stdout.
    pub fn busybox<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.busybox_command(args).output()?;
        ensure!(
            out.status.success(),
            "busybox {:?}: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PlainNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
