//! Confinement a supervised child takes on between fork and exec, for a monitor that cannot
//! jail itself (QEMU): a mount namespace of its own whose `/dev` is a fresh tmpfs holding
//! only the device nodes it needs (the host's devices disappear; `/dev/kvm` is a node owned
//! by the child's uid, so no host-wide permission changes), then an unprivileged uid/gid of
//! the pod's own with no supplementary groups, which clears every capability.
//!
//! Everything is prepared before the fork ([`Confinement::new`]); [`Confinement::apply`]
//! only makes raw syscalls, which is all that is safe in the child of a multi-threaded
//! process.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::vmm::VmmError;

/// `/dev` of a confined child: a few nodes, nothing written later.
const DEV_TMPFS_OPTIONS: &str = "mode=0755,size=16k,nr_inodes=16";

struct Node {
    path: CString,
    mode: libc::mode_t,
    rdev: libc::dev_t,
    owned: bool,
}

pub(crate) struct Confinement {
    uid: libc::uid_t,
    gid: libc::gid_t,
    nodes: Vec<Node>,
    dev: CString,
    tmpfs: CString,
    options: CString,
    root: CString,
}

fn cstring(s: &str) -> Result<CString, VmmError> {
    CString::new(s).map_err(|_| VmmError::InvalidSpec(format!("{s:?} contains a NUL byte")))
}

impl Confinement {
    /// `shared`: devices every process may use (`/dev/null`, …), recreated mode 0666;
    /// `owned`: devices only the child may use (`/dev/kvm`), mode 0600 owned by `uid`.
    pub(crate) fn new(
        uid: u32,
        gid: u32,
        shared: &[&str],
        owned: &[&str],
    ) -> Result<Self, VmmError> {
        let mut nodes = Vec::new();
        for (list, is_owned) in [(shared, false), (owned, true)] {
            for &path in list {
                let meta = std::fs::metadata(path).map_err(|e| VmmError::MissingFile {
                    what: "device",
                    path: path.into(),
                    reason: e.to_string(),
                })?;
                if !meta.file_type().is_char_device() {
                    return Err(VmmError::MissingFile {
                        what: "device",
                        path: path.into(),
                        reason: "not a character device".into(),
                    });
                }
                nodes.push(Node {
                    path: cstring(path)?,
                    mode: libc::S_IFCHR | if is_owned { 0o600 } else { 0o666 },
                    rdev: meta.rdev(),
                    owned: is_owned,
                });
            }
        }
        Ok(Self {
            uid,
            gid,
            nodes,
            dev: cstring("/dev")?,
            tmpfs: cstring("tmpfs")?,
            options: cstring(DEV_TMPFS_OPTIONS)?,
            root: cstring("/")?,
        })
    }

    /// Runs in the forked child, before exec.
    ///
    /// # Safety
    /// Call only between fork and exec: it changes the calling process's namespaces and
    /// credentials for good.
    pub(crate) unsafe fn apply(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: raw syscalls on NUL-terminated strings owned by `self`, which outlives them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.dev.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                self.options.as_ptr().cast(),
            ))?;
            for node in &self.nodes {
                check(libc::mknod(node.path.as_ptr(), node.mode, node.rdev))?;
                // mknod applies the umask; the mode must be exact.
                check(libc::chmod(node.path.as_ptr(), node.mode & 0o777))?;
                if node.owned {
                    check(libc::chown(node.path.as_ptr(), self.uid, self.gid))?;
                }
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            // All uids non-zero: the kernel clears every capability.
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
        }
        Ok(())
    }
}
