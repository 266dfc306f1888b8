//! CreateSandbox's request as a pod: CRI's `PodSandboxConfig` (the request's options) and
//! the network namespace CNI set up, turned into the [`PodPlan`] a VM boots from and the
//! pod files ([`PodFiles`]) containerd leaves to a shim sandboxer.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use husk_protocol::cri_sandbox::{NamespaceMode, PodSandboxConfig};
use husk_protocol::protobuf::{Enum, Message};
use thiserror::Error;

use crate::pod_launch::{HOST_NETWORK_REFUSED, PodPlan};
use crate::sizing::{CPU_PERIOD_ANNOTATION, CPU_QUOTA_ANNOTATION, MEMORY_ANNOTATION};

/// How containerd's typeurl names CRI's pod config (with or without a URL prefix).
const POD_CONFIG_TYPE: &str = "runtime.v1.PodSandboxConfig";
/// The prefix containerd's shim sandboxer gives a pod's cgroup under a systemd slice.
const SYSTEMD_SCOPE_PREFIX: &str = "cri-containerd";
/// At most this many DNS servers, search domains and options (glibc reads 3 servers and 6
/// search domains; the rest only makes the file bigger).
const MAX_DNS_ENTRIES: usize = 32;
/// A DNS entry longer than a domain name can be is refused.
const MAX_DNS_ENTRY: usize = 253;

#[derive(Debug, Error)]
pub enum PodConfigError {
    #[error(
        "CreateSandbox carries no CRI pod config (options of type {POD_CONFIG_TYPE}); husk's \
         Sandbox API serves containerd's CRI (sandboxer = \"shim\")"
    )]
    Missing,
    #[error("CreateSandbox's options are of type {0:?}, not CRI's {POD_CONFIG_TYPE}")]
    WrongType(String),
    #[error("decoding CRI's pod config")]
    Decode(#[source] husk_protocol::protobuf::Error),
    #[error("{0}")]
    HostNamespace(String),
    #[error("the pod's {what} {value:?} cannot go into a generated file: {why}")]
    BadText {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// The files containerd's pause-container sandboxer writes for a pod and a shim sandboxer
/// must provide itself: `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub hostname: String,
    pub hosts: String,
    /// None: no DNS config in the pod config, so the node's `/etc/resolv.conf` is copied
    /// (what containerd does).
    pub resolv_conf: Option<String>,
}

/// A pod as CreateSandbox describes it.
#[derive(Debug, Clone)]
pub struct PodRequest {
    pub plan: PodPlan,
    pub files: PodFiles,
    /// The pod's sysctls, set in the pause container's namespaces (and the VM's network).
    pub sysctls: HashMap<String, String>,
}

/// Reads CreateSandbox's request for pod `id`.
pub fn pod_request(
    id: &str,
    options: Option<&Any>,
    netns_path: &str,
    config_path: Option<String>,
) -> Result<PodRequest, PodConfigError> {
    let any = options.ok_or(PodConfigError::Missing)?;
    if any.type_url.rsplit('/').next() != Some(POD_CONFIG_TYPE) {
        return Err(PodConfigError::WrongType(any.type_url.clone()));
    }
    let config = PodSandboxConfig::parse_from_bytes(&any.value).map_err(PodConfigError::Decode)?;
    refuse_host_namespaces(&config)?;
    let hostname = if config.hostname.is_empty() {
        id.chars().take(12).collect()
    } else {
        config.hostname.clone()
    };
    check_line("hostname", &hostname)?;
    let files = PodFiles {
        hosts: hosts_file(&hostname),
        resolv_conf: resolv_conf(&config)?,
        hostname: hostname.clone(),
    };
    let linux = config.linux.as_ref();
    let plan = PodPlan {
        group: id.to_owned(),
        config_path,
        hostname,
        annotations: sizing_annotations(&config),
        cgroups_path: linux.and_then(|l| cgroups_path(&l.cgroup_parent, id)),
        netns: Some(netns_path)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };
    let sysctls = linux.map(|l| l.sysctls.clone()).unwrap_or_default();
    Ok(PodRequest {
        plan,
        files,
        sysctls,
    })
}

/// A VM has its own kernel: a pod sharing the node's network, PID or IPC namespace cannot
/// be given one (the same refusal as for a pause container without them).
fn refuse_host_namespaces(config: &PodSandboxConfig) -> Result<(), PodConfigError> {
    let Some(ns) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    else {
        return Ok(());
    };
    let node = |m: &husk_protocol::protobuf::EnumOrUnknown<NamespaceMode>| {
        m.value() == NamespaceMode::NODE.value()
    };
    if node(&ns.network) {
        return Err(PodConfigError::HostNamespace(HOST_NETWORK_REFUSED.into()));
    }
    for (mode, what) in [(&ns.pid, "hostPID"), (&ns.ipc, "hostIPC")] {
        if node(mode) {
            return Err(PodConfigError::HostNamespace(
                crate::pod_launch::host_namespace_refused(what).to_string(),
            ));
        }
    }
    Ok(())
}

/// The pod's summed limits as the sizing annotations containerd puts on a pause container.
fn sizing_annotations(config: &PodSandboxConfig) -> HashMap<String, String> {
    let mut annotations = HashMap::new();
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return annotations;
    };
    for (key, value) in [
        (CPU_PERIOD_ANNOTATION, r.cpu_period),
        (CPU_QUOTA_ANNOTATION, r.cpu_quota),
        (MEMORY_ANNOTATION, r.memory_limit_in_bytes),
    ] {
        annotations.insert(key.to_owned(), value.to_string());
    }
    annotations
}

/// The pod cgroup under CRI's `cgroup_parent`, named as containerd names a pause
/// container's: `<slice>:cri-containerd:<id>` under a systemd slice, `<parent>/<id>` else.
fn cgroups_path(parent: &str, id: &str) -> Option<String> {
    if parent.is_empty() {
        None
    } else if parent.ends_with(".slice") {
        Some(format!("{parent}:{SYSTEMD_SCOPE_PREFIX}:{id}"))
    } else {
        Some(format!("{}/{id}", parent.trim_end_matches('/')))
    }
}

/// What kubelet writes for a pod without host networking.
fn hosts_file(hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file (husk).\n127.0.0.1\tlocalhost\n::1\tlocalhost \
         ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// `/etc/resolv.conf` from the pod's DNS config, as containerd writes it.
fn resolv_conf(config: &PodSandboxConfig) -> Result<Option<String>, PodConfigError> {
    let Some(dns) = config.dns_config.as_ref() else {
        return Ok(None);
    };
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for (what, entries) in [
        ("DNS search domain", &dns.searches),
        ("DNS server", &dns.servers),
        ("DNS option", &dns.options),
    ] {
        if entries.len() > MAX_DNS_ENTRIES {
            return Err(PodConfigError::BadText {
                what,
                value: format!("{} entries", entries.len()),
                why: "more than 32",
            });
        }
        for e in entries.iter() {
            check_line(what, e)?;
            if e.len() > MAX_DNS_ENTRY || e.contains(char::is_whitespace) {
                return Err(PodConfigError::BadText {
                    what,
                    value: e.clone(),
                    why: "longer than a domain name, or with blanks",
                });
            }
        }
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(Some(text))
}

/// One line of a generated file: no line break or NUL can add lines of its own.
fn check_line(what: &'static str, value: &str) -> Result<(), PodConfigError> {
    if value.is_empty() || value.contains(['\n', '\r', '\0']) {
        return Err(PodConfigError::BadText {
            what,
            value: value.to_owned(),
            why: "empty, or contains a line break or NUL",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use husk_protocol::cri_sandbox::{
        DNSConfig, LinuxContainerResources, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
        NamespaceOption,
    };

    use super::*;

    fn any(config: &PodSandboxConfig) -> Any {
        let mut a = Any::new();
        a.type_url = "types.containerd.io/runtime.v1.PodSandboxConfig".into();
        a.value = config.write_to_bytes().unwrap();
        a
    }

    fn config() -> PodSandboxConfig {
        let mut c = PodSandboxConfig::new();
        c.hostname = "web-0".into();
        let mut dns = DNSConfig::new();
        dns.servers = vec!["10.96.0.10".into()];
        dns.searches = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
        dns.options = vec!["ndots:5".into()];
        c.dns_config = Some(dns).into();
        let mut linux = LinuxPodSandboxConfig::new();
        linux.cgroup_parent = "/kubepods/burstable/pod1".into();
        let mut r = LinuxContainerResources::new();
        r.cpu_period = 100_000;
        r.cpu_quota = 150_000;
        r.memory_limit_in_bytes = 256 << 20;
        linux.resources = Some(r).into();
        c.linux = Some(linux).into();
        c
    }

    #[test]
    fn reads_what_the_pod_boots_from() {
        let r = pod_request(
            "abc123",
            Some(&any(&config())),
            "/var/run/netns/cni-1",
            None,
        )
        .unwrap();
        assert_eq!(r.plan.hostname, "web-0");
        assert_eq!(r.plan.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(
            r.plan.cgroups_path.as_deref(),
            Some("/kubepods/burstable/pod1/abc123")
        );
        assert_eq!(r.plan.annotations[CPU_QUOTA_ANNOTATION], "150000");
        assert_eq!(
            r.plan.annotations[MEMORY_ANNOTATION],
            (256u64 << 20).to_string()
        );
        assert_eq!(
            r.files.resolv_conf.as_deref(),
            Some(
                "search default.svc.cluster.local cluster.local\nnameserver 10.96.0.10\n\
                 options ndots:5\n"
            )
        );
        assert!(r.files.hosts.ends_with("127.0.1.1\tweb-0\n"));
    }

    #[test]
    fn systemd_parents_get_a_scope() {
        assert_eq!(
            cgroups_path("kubepods-besteffort-pod1.slice", "abc").as_deref(),
            Some("kubepods-besteffort-pod1.slice:cri-containerd:abc")
        );
        assert_eq!(cgroups_path("", "abc"), None);
    }

    #[test]
    fn refuses_host_namespaces() {
        for set in [
            |n: &mut NamespaceOption| n.network = NamespaceMode::NODE.into(),
            |n: &mut NamespaceOption| n.pid = NamespaceMode::NODE.into(),
            |n: &mut NamespaceOption| n.ipc = NamespaceMode::NODE.into(),
        ] {
            let mut c = config();
            let mut ns = NamespaceOption::new();
            set(&mut ns);
            let mut sc = LinuxSandboxSecurityContext::new();
            sc.namespace_options = Some(ns).into();
            c.linux.as_mut().unwrap().security_context = Some(sc).into();
            let e = pod_request("p", Some(&any(&c)), "", None).unwrap_err();
            assert!(matches!(e, PodConfigError::HostNamespace(_)), "{e}");
        }
    }

    #[test]
    fn refuses_lines_smuggled_into_files() {
        let mut c = config();
        c.dns_config.as_mut().unwrap().servers = vec!["1.1.1.1\nnameserver 6.6.6.6".into()];
        assert!(pod_request("p", Some(&any(&c)), "", None).is_err());
        let mut c = config();
        c.hostname = "a\nb".into();
        assert!(pod_request("p", Some(&any(&c)), "", None).is_err());
    }

    #[test]
    fn refuses_other_options() {
        assert!(matches!(
            pod_request("p", None, "", None),
            Err(PodConfigError::Missing)
        ));
        let mut a = any(&config());
        a.type_url = "runtimeoptions.v1.Options".into();
        assert!(matches!(
            pod_request("p", Some(&a), "", None),
            Err(PodConfigError::WrongType(_))
        ));
        a.type_url = POD_CONFIG_TYPE.into();
        a.value = vec![0xff, 0xff];
        assert!(matches!(
            pod_request("p", Some(&a), "", None),
            Err(PodConfigError::Decode(_))
        ));
    }
}
