//! The security context of a CRI container holds inside the guest as runc enforces it on a
//! host: user, group and supplemental groups (by id, and by name with the image's groups
//! for the user), a read-only root filesystem, capabilities dropped and added,
//! no_new_privs, privileged, masked and read-only /proc paths, and seccomp RuntimeDefault,
//! Unconfined and Localhost (a profile that blocks sethostname blocks it in the guest; an
//! invalid one is refused by name). On containerd 1.6 and 2.x.

mod cri_common;

use anyhow::{Context, Result, ensure};
use cri_common::{exec_ok, stop_and_remove_pod};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, Int64Value, LinuxContainerSecurityContext, PodSandboxConfig, SecurityProfile,
};

/// Every capability a 6.1 guest kernel knows (41).
const ALL_CAPS: u64 = 0x1ff_ffff_ffff;
/// CAP_NET_ADMIN (12) alone.
const NET_ADMIN_ONLY: &str = "0000000000001000";

struct Pod<'a> {
    w: &'a CriWorld,
    id: String,
    cfg: PodSandboxConfig,
}

impl Pod<'_> {
    /// Starts `sleep` with `edit` applied to its security context; returns its id.
    fn start(
        &self,
        name: &str,
        edit: impl FnOnce(&mut LinuxContainerSecurityContext),
    ) -> Result<String> {
        let mut cfg = specs::container_config(name, &["sleep", "100000"]);
        let sc = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .context("the container config has no security context")?;
        edit(sc);
        let id = self.w.create_container(&self.id, &cfg, &self.cfg)?;
        self.w.client().start_container(&id)?;
        Ok(id)
    }

    /// What `script` prints in container `id`.
    fn run(&self, id: &str, script: &str) -> Result<String> {
        Ok(exec_ok(self.w.client(), id, &["sh", "-c", script])?
            .trim()
            .to_owned())
    }
}

fn status_field(pod: &Pod, id: &str, field: &str) -> Result<String> {
    pod.run(
        id,
        &format!("sed -n 's/^{field}:[[:space:]]*//p' /proc/self/status"),
    )
}

fn profile(kind: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    })
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capability> {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    Some(Capability {
        add_capabilities: own(add),
        drop_capabilities: own(drop),
        ..Default::default()
    })
}

fn identity(pod: &Pod) -> Result<()> {
    let by_id = pod.start("by-id", |sc| {
        sc.run_as_user = Some(Int64Value { value: 1234 });
        sc.run_as_group = Some(Int64Value { value: 5678 });
        sc.supplemental_groups = vec![4000];
    })?;
    let ids = pod.run(&by_id, "echo $(id -u) $(id -g) $(id -G)")?;
    let words: Vec<&str> = ids.split_whitespace().collect();
    ensure!(
        words.len() >= 3 && words[..2] == ["1234", "5678"] && words[2..].contains(&"4000"),
        "runAsUser/runAsGroup/supplementalGroups not applied: {ids:?}"
    );
    // The image's /etc/group puts user husk (1000) in wheel (10) as well.
    let by_name = pod.start("by-name", |sc| sc.run_as_username = "husk".into())?;
    let ids = pod.run(&by_name, "echo $(id -u) $(id -g) $(id -G)")?;
    let words: Vec<&str> = ids.split_whitespace().collect();
    ensure!(
        words.len() >= 3 && words[..2] == ["1000", "1000"] && words[2..].contains(&"10"),
        "runAsUserName husk: uid, gid and the image's groups for the user: {ids:?}"
    );
    Ok(())
}

fn filesystem(pod: &Pod) -> Result<()> {
    let ro = pod.start("read-only", |sc| sc.readonly_rootfs = true)?;
    let wrote = pod.run(
        &ro,
        "touch /probe 2>/dev/null && echo wrote || echo refused",
    )?;
    ensure!(wrote == "refused", "readOnlyRootFilesystem: {wrote}");
    let plain = pod.start("plain", |_| {})?;
    let seen = pod.run(
        &plain,
        "echo keys=$(wc -c < /proc/keys) sys=$(echo x 2>/dev/null > /proc/sys/kernel/domainname \
         && echo rw || echo ro)",
    )?;
    ensure!(
        seen == "keys=0 sys=ro",
        "kubelet's default masked (/proc/keys) and read-only (/proc/sys) paths: {seen}"
    );
    Ok(())
}

fn privileges(pod: &Pod) -> Result<()> {
    let dropped = pod.start("caps", |sc| {
        sc.capabilities = caps(&["NET_ADMIN"], &["ALL"]);
    })?;
    let eff = status_field(pod, &dropped, "CapEff")?;
    ensure!(
        eff == NET_ADMIN_ONLY,
        "drop ALL + add NET_ADMIN: CapEff {eff}"
    );
    let nnp = pod.start("nnp", |sc| sc.no_new_privs = true)?;
    let flag = status_field(pod, &nnp, "NoNewPrivs")?;
    ensure!(flag == "1", "no_new_privs: NoNewPrivs {flag}");
    let privileged = pod.start("privileged", |sc| sc.privileged = true)?;
    let eff = status_field(pod, &privileged, "CapEff")?;
    // containerd grants "all" as every capability it holds itself (as this test does).
    let host = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16))
        .context("no CapEff in /proc/self/status")??;
    let wanted = format!("{:016x}", host & ALL_CAPS);
    ensure!(
        eff == wanted,
        "privileged: CapEff {eff}, containerd's own set is {wanted}"
    );
    // The guest's devices (never the host's): /dev/kmsg is the guest kernel's log.
    let kmsg = pod.run(
        &privileged,
        "test -c /dev/kmsg && head -c 0 /dev/kmsg && echo yes",
    )?;
    ensure!(kmsg == "yes", "privileged: no usable /dev/kmsg ({kmsg:?})");
    let plain = pod.run(&dropped, "test -e /dev/kmsg && echo present || echo absent")?;
    ensure!(plain == "absent", "an unprivileged container has /dev/kmsg");
    Ok(())
}

fn seccomp(pod: &Pod, dir: &std::path::Path) -> Result<()> {
    let confined = pod.start("default-profile", |sc| {
        sc.seccomp = profile(ProfileType::RuntimeDefault, "");
    })?;
    let mode = status_field(pod, &confined, "Seccomp")?;
    ensure!(mode == "2", "RuntimeDefault: Seccomp mode {mode}");
    let free = pod.start("unconfined", |sc| {
        sc.seccomp = profile(ProfileType::Unconfined, "");
        sc.capabilities = caps(&["SYS_ADMIN"], &[]);
    })?;
    let mode = status_field(pod, &free, "Seccomp")?;
    ensure!(mode == "0", "Unconfined: Seccomp mode {mode}");
    let sethostname = "hostname husk-probe 2>/dev/null && echo allowed || echo blocked";
    let control = pod.run(&free, sethostname)?;
    ensure!(
        control == "allowed",
        "with CAP_SYS_ADMIN and no profile sethostname is {control}: the check below would \
         prove nothing"
    );

    let blocking = dir.join("no-sethostname.json");
    std::fs::write(
        &blocking,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )?;
    let blocked = pod.start("localhost-profile", |sc| {
        sc.seccomp = profile(ProfileType::Localhost, &blocking.to_string_lossy());
        sc.capabilities = caps(&["SYS_ADMIN"], &[]);
    })?;
    let result = pod.run(&blocked, sethostname)?;
    ensure!(
        result == "blocked",
        "a Localhost profile blocking sethostname: {result}"
    );

    let invalid = dir.join("invalid.json");
    std::fs::write(&invalid, "{ this is not a profile")?;
    let refused = pod.start("invalid-profile", |sc| {
        sc.seccomp = profile(ProfileType::Localhost, &invalid.to_string_lossy());
    });
    let err = match refused {
        Ok(id) => anyhow::bail!("a container with an invalid seccomp profile started: {id}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("seccomp") || err.contains(&*invalid.to_string_lossy()),
        "the error does not name the invalid profile: {err}"
    );
    Ok(())
}

fn security(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-security", flavour)?;
    let mut cfg = w.pod_config("security")?;
    // A privileged container needs a privileged sandbox.
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
    }
    let id = w.run_pod_with(&cfg)?;
    let pod = Pod { w: &w, id, cfg };
    identity(&pod)?;
    filesystem(&pod)?;
    privileges(&pod)?;
    seccomp(&pod, w.dir())?;
    stop_and_remove_pod(&w, &pod.id)?;
    w.finish()?;
    Ok(())
}

#[test]
fn security_context_on_containerd_1_6() -> Result<()> {
    security(ContainerdFlavour::System)
}

#[test]
fn security_context_on_containerd_2() -> Result<()> {
    security(ContainerdFlavour::V2)
}

#[test]
fn security_context_on_containerd_2_sandbox_api() -> Result<()> {
    security(ContainerdFlavour::V2SandboxApi)
}
