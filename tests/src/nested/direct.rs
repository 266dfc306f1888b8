//! The same run on a host whose own `/dev/kvm` runs standard guests: no outer VM, the script
//! runs here in a private mount namespace where `/tmp`, `/run`, `/var/tmp` and the requested
//! writable paths are fresh tmpfs mounts (the scratch directory and the kept host directories
//! are bound back in place), so
//! what it mounts or leaves there vanishes with it, as in the outer VM. Environment, working
//! directory and timeout come from the same wrapper the outer VM's init uses.

use std::path::Path;
use std::time::Duration;

use super::init::{COMMAND_FILE, KEEP_FILE, KILL_AFTER_SECS, SETUP_FILE};
use super::{NestedError, NestedOutput};
use crate::cmd::Cmd;

/// Mounts the tmpfs directories, keeping the host directories listed in `$3` (the scratch
/// directory among them) visible: held aside under a private tmpfs on /mnt, then put back.
/// Then runs the wrapper `$2`; `$1` lists the extra writable paths.
const PREPARE: &str = r#"set -e
mount -t tmpfs -o mode=0700 husk-nested-keep /mnt
cp "$3" /mnt/list
n=0
while read -r p; do mkdir "/mnt/$n"; mount --bind "$p" "/mnt/$n"; n=$((n + 1)); done < /mnt/list
mount -t tmpfs -o mode=0755 husk-nested /run
mount -t tmpfs -o mode=1777 husk-nested /tmp
mount -t tmpfs -o mode=1777 husk-nested /var/tmp
n=0
while read -r p; do mkdir -p "$p"; mount --move "/mnt/$n" "$p"; n=$((n + 1)); done < /mnt/list
umount /mnt
while read -r p; do mkdir -p "$p"; mount -t tmpfs husk-nested "$p"; done < "$1"
exec /bin/sh "$2"
"#;

/// Runs the script prepared in `run_dir`.
pub(super) fn run(run_dir: &Path, timeout: Duration) -> Result<NestedOutput, NestedError> {
    let out = Cmd::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            PREPARE,
        ])
        .arg("husk-nested-direct")
        .arg(run_dir.join(SETUP_FILE))
        .arg(run_dir.join(COMMAND_FILE))
        .arg(run_dir.join(KEEP_FILE))
        .timeout(timeout + Duration::from_secs(KILL_AFTER_SECS + 5))
        .output()
        .map_err(NestedError::Direct)?;
    Ok(NestedOutput {
        code: out.code(),
        stdout: out.stdout,
        stderr: out.stderr,
        console: String::new(),
        boot: None,
        elapsed: out.elapsed,
    })
}
