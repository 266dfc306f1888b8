//! The guest spec of a Sandbox API pod's pause container. With no pause image, the agent's
//! own (static) binary, bind-mounted read-only from the guest's `/init` into an otherwise
//! empty root, holds the pod's IPC, UTS and PID namespaces, as the pause image does for a
//! pause-container pod. It runs as the pause image's user, with no capabilities and no way
//! to gain any.

use std::collections::HashMap;

use husk_protocol::{GUEST_AGENT_PATH, PAUSE_ARG};

use super::pod_files::PAUSE_BINARY;
use crate::guest_spec::guest_rootfs;

/// The pause image's user and group.
const PAUSE_ID: u32 = 65535;

/// The pause container's guest OCI spec (JSON) for pod `id`.
pub fn guest_spec(id: &str, hostname: &str, sysctls: &HashMap<String, String>) -> Vec<u8> {
    let pause = format!("/{PAUSE_BINARY}");
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": PAUSE_ID, "gid": PAUSE_ID},
            "args": [pause, PAUSE_ARG],
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
            }
        },
        "root": {"path": guest_rootfs(id), "readonly": true},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=64k"]},
            {"destination": pause, "type": "bind", "source": GUEST_AGENT_PATH,
             "options": ["rbind", "ro", "nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "sysctl": sysctls,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::Spec;

    use super::*;

    #[test]
    fn is_a_valid_unprivileged_spec() {
        let sysctls = HashMap::from([("kernel.shmmax".to_owned(), "1024".to_owned())]);
        let spec: Spec = serde_json::from_slice(&guest_spec("pod1", "web-0", &sysctls)).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), PAUSE_ID);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .is_empty()
        );
        assert_eq!(p.args().as_ref().unwrap()[1], PAUSE_ARG);
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        assert_eq!(spec.root().as_ref().unwrap().path(), &guest_rootfs("pod1"));
        assert_eq!(
            spec.linux().as_ref().unwrap().sysctl().as_ref().unwrap()["kernel.shmmax"],
            "1024"
        );
    }
}
