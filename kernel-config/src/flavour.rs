//! The kernels husk builds from one source: the pod VM's *guest* kernel and the *outer*
//! kernel of the nested-KVM test host (a QEMU/TCG VM with `-cpu max`, which emulates AMD
//! SVM, used to test KVM-based monitors on machines without usable hardware
//! virtualization).
//!
//! Each flavour is a list of fragment layers below the `kernel-config` directory: the
//! guest is `fragments/`; the outer kernel is `fragments/` followed by `outer/` (so it can
//! run everything the project's binaries need, plus 9p, KVM and host networking). The
//! guest's fragment set, and therefore its cache key, is exactly what it was before
//! flavours existed.

use std::fmt;
use std::path::Path;

use crate::fragments::{FragmentError, FragmentSet};
use crate::patches::PatchSet;

/// A kernel flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// The kernel every pod VM boots.
    Guest,
    /// The kernel of the nested-KVM test host.
    Outer,
}

impl Flavour {
    /// Every flavour, in build order.
    pub const ALL: [Flavour; 2] = [Flavour::Guest, Flavour::Outer];

    /// Short name for messages and log files.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Guest => "guest",
            Flavour::Outer => "outer",
        }
    }

    /// `(directory below kernel-config/, name prefix in the cache key)` of each layer, in
    /// merge order.
    pub fn layers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Flavour::Guest => &[("fragments", "")],
            Flavour::Outer => &[("fragments", ""), ("outer", "outer/")],
        }
    }

    /// Loads the flavour's fragments from `kernel_config_dir` (the `kernel-config` crate
    /// directory).
    pub fn fragments(self, kernel_config_dir: &Path) -> Result<FragmentSet, FragmentError> {
        let mut set = FragmentSet::from_fragments(Vec::new());
        for (dir, prefix) in self.layers() {
            set = set.followed_by(prefix, FragmentSet::load(&kernel_config_dir.join(dir))?);
        }
        Ok(set)
    }
}

impl Flavour {
    /// Loads the flavour's source patches: `patches/` for the guest. The outer kernel
    /// takes none (what they change matters to pod VMs only, and its cached build stays
    /// valid).
    pub fn patches(self, kernel_config_dir: &Path) -> Result<PatchSet, FragmentError> {
        match self {
            Flavour::Guest => PatchSet::load(&kernel_config_dir.join("patches")),
            Flavour::Outer => Ok(PatchSet::default()),
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragments::Request;
    use crate::key::cache_key;

    fn crate_dir() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_guest_is_exactly_the_fragments_directory() {
        let guest = Flavour::Guest.fragments(crate_dir()).unwrap();
        let plain = FragmentSet::load(&crate_dir().join("fragments")).unwrap();
        assert_eq!(guest, plain);
        let none = PatchSet::default();
        assert_eq!(cache_key("v", &guest, &none), cache_key("v", &plain, &none));
        assert!(
            !Flavour::Guest
                .patches(crate_dir())
                .unwrap()
                .patches()
                .is_empty()
        );
        assert!(
            Flavour::Outer
                .patches(crate_dir())
                .unwrap()
                .patches()
                .is_empty()
        );
    }

    #[test]
    fn the_outer_kernel_extends_the_guest_with_kvm_and_9p() {
        let guest = Flavour::Guest.fragments(crate_dir()).unwrap();
        let outer = Flavour::Outer.fragments(crate_dir()).unwrap();
        assert_eq!(
            &outer.fragments()[..guest.fragments().len()],
            guest.fragments()
        );
        assert!(
            outer.fragments()[guest.fragments().len()..]
                .iter()
                .all(|f| f.name.starts_with("outer/"))
        );
        let requests = outer.requests();
        for symbol in [
            "CONFIG_VIRTUALIZATION",
            "CONFIG_KVM",
            "CONFIG_KVM_AMD",
            "CONFIG_CPU_SUP_AMD",
            "CONFIG_HIGH_RES_TIMERS",
            "CONFIG_NET_9P",
            "CONFIG_NET_9P_VIRTIO",
            "CONFIG_9P_FS",
            "CONFIG_9P_FS_POSIX_ACL",
            "CONFIG_TUN",
            "CONFIG_VETH",
            "CONFIG_DEVTMPFS",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_VIRTIO_PCI",
        ] {
            let want = Request::Set {
                symbol: symbol.into(),
                line: format!("{symbol}=y"),
            };
            assert!(requests.contains(&want), "{symbol}=y is not requested");
        }
        let none = PatchSet::default();
        assert_ne!(cache_key("v", &guest, &none), cache_key("v", &outer, &none));
    }
}
