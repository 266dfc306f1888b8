//! The nested-KVM test host itself (`husk_tests::nested`): a script runs chrooted in the
//! build machine's root with `/dev/kvm` (or directly, on a host with usable KVM), its output, exit status and scratch files come
//! back, the root stays read-only while the requested places are writable, and a script
//! that overruns its timeout is stopped and reported rather than hanging the VM.

use std::time::Duration;

use anyhow::{Result, ensure};
use husk_tests::nested::{NestedHost, SCRIPT_TIMED_OUT};
use husk_tests::{Artifacts, LeakScope, TestScope};

const SCRIPT: &str = r#"
set -u
echo "to stdout"
echo "to stderr" >&2
test -c /dev/kvm || { echo "no /dev/kvm" >&2; exit 10; }
test -e /sys/module/kvm_pvm && { echo "kvm_pvm is loaded" >&2; exit 12; }
if [ "$HUSK_NESTED_MODE" = outer ]; then
    grep -qw svm /proc/cpuinfo || { echo "no svm flag" >&2; exit 11; }
    touch /usr/husk-nested-probe 2>/dev/null && { echo "the host root is writable" >&2; exit 13; }
fi
echo tmp-ok > /tmp/probe && cat /tmp/probe
mkdir -p /run/husk && echo run-ok > /run/husk/probe && cat /run/husk/probe
echo extra-ok > /var/cache/probe && cat /var/cache/probe
test "$(pwd)" = "$HUSK_NESTED_SCRATCH" || { echo "cwd is $(pwd)" >&2; exit 14; }
cat input.txt
echo "from inside" > output.txt
echo "HELLO=$HELLO"
exit 7
"#;

#[test]
fn a_script_runs_with_kvm_and_its_results_come_back() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let scope = TestScope::new("nested-host")?;
    std::fs::write(scope.dir().join("input.txt"), "from outside\n")?;
    let host = NestedHost::new(&artifacts, scope.dir())?
        .env("HELLO", "it's me")
        .writable("/var/cache");
    let out = host.run(SCRIPT, Duration::from_secs(60))?;
    let stdout = out.stdout_text();
    ensure!(out.code == 7, "expected exit status 7: {}", out.describe());
    ensure!(
        stdout == "to stdout\ntmp-ok\nrun-ok\nextra-ok\nfrom outside\nHELLO=it's me\n",
        "unexpected stdout: {}",
        out.describe()
    );
    ensure!(out.stderr_text() == "to stderr\n", "{}", out.describe());
    let back = std::fs::read_to_string(scope.dir().join("output.txt"))?;
    ensure!(
        back == "from inside\n",
        "scratch file came back as {back:?}"
    );
    eprintln!(
        "nested host: outer boot {:?} (its uptime at the script), whole run {:?}",
        out.boot, out.elapsed
    );
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn a_script_past_its_timeout_is_stopped_and_reported() -> Result<()> {
    let artifacts = Artifacts::from_env_unchecked()?;
    let scope = TestScope::new("nested-timeout")?;
    let host = NestedHost::new(&artifacts, scope.dir())?;
    let out = host.run(
        "echo started; sleep 600; echo never",
        Duration::from_secs(2),
    )?;
    ensure!(
        out.code == SCRIPT_TIMED_OUT && out.stdout_text() == "started\n",
        "expected exit status {SCRIPT_TIMED_OUT} after 'started': {}",
        out.describe()
    );
    ensure!(
        out.elapsed < Duration::from_secs(120),
        "the VM took {:?} to report a 2 s timeout",
        out.elapsed
    );
    LeakScope::new(scope.tag(), "nested", scope.dir(), 0)
        .wait_clean(&[], Duration::from_secs(5))?;
    Ok(())
}
