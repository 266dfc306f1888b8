//! Nested KVM works: inside the nested test host (`husk_tests::nested`), QEMU with
//! `-accel kvm -cpu host` boots the husk guest kernel and initramfs to the agent's first
//! console line. This proves the harness the built-in VMM's end-to-end tests stand on,
//! and measures the inner boot (printed for BENCHMARKS.md).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use husk_tests::nested::NestedHost;
use husk_tests::{ARTIFACTS_ENV, Artifacts, LeakScope, TestScope};

/// Inner boots per run (the median is reported).
const BOOTS: usize = 3;

/// Boots QEMU/KVM `$1` times; prints `boot_ms=<host wall ms> <agent line>` per boot.
/// The machine, CPU and command line are the shim's (hypervisor/src/qemu/args.rs) minus
/// devices: the agent prints its first line before it needs any.
const SCRIPT: &str = r#"
set -u
A="$HUSK_ARTIFACTS"
for i in $(seq 1 "$BOOTS"); do
    log="/tmp/inner-$i.log"
    start=$(date +%s%N)
    qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -smp 1 -m 256 \
        -nodefaults -no-user-config -no-reboot -display none -monitor none -serial stdio \
        -kernel "$A/vmlinux" -initrd "$A/initrd.img" \
        -append "console=ttyS0 quiet panic=-1 reboot=t pci=off" > "$log" 2>&1 &
    pid=$!
    found=
    deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if grep -q "agent starting" "$log"; then found=$(date +%s%N); break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -z "$found" ]; then
        echo "boot $i: no 'agent starting' within 60 s; QEMU output:" >&2
        cat "$log" >&2
        exit 1
    fi
    echo "boot_ms=$(( (found - start) / 1000000 )) $(grep -m1 'agent starting' "$log")"
done
"#;

#[test]
fn qemu_with_kvm_boots_the_guest_inside_the_nested_host() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    for f in [artifacts.vmlinux(), artifacts.initrd()] {
        ensure!(
            f.is_file(),
            "{} is missing: run `cargo xtask build`",
            f.display()
        );
    }
    let scope = TestScope::new("nested-qemu")?;
    let host = NestedHost::new(&artifacts, scope.dir())?
        .env(ARTIFACTS_ENV, &artifacts.dir().display().to_string())
        .env("BOOTS", &BOOTS.to_string());
    let out = host.run(SCRIPT, Duration::from_secs(240))?;
    ensure!(
        out.code == 0,
        "inner QEMU/KVM boot failed: {}",
        out.describe()
    );
    let mut boots: Vec<u64> = out
        .stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix("boot_ms=")?.split(' ').next()?.parse().ok())
        .collect();
    ensure!(
        boots.len() == BOOTS,
        "expected {BOOTS} boot times: {}",
        out.describe()
    );
    boots.sort_unstable();
    let median = boots.get(BOOTS / 2).context("no boots")?;
    eprintln!("{}", out.stdout_text().trim_end());
    eprintln!(
        "nested QEMU/KVM: QEMU start to 'agent starting' median {median} ms (all {boots:?}); \
         outer boot {:?}, whole outer run {:?}",
        out.boot, out.elapsed
    );
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}
