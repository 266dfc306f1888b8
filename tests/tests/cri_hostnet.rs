//! Host-network pods (`NamespaceMode::NODE`): husk runs every pod in a VM with its own
//! network stack, so RunPodSandbox refuses them promptly with an error that says why, and
//! nothing is left behind.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use husk_tests::ContainerdFlavour;
use husk_tests::cri::{CriWorld, specs};
use k8s_cri::v1::NamespaceMode;

/// The start of the shim's refusal (`shim/src/task/create.rs`).
const REFUSAL: &str = "husk runs each pod in its own VM";
/// Refusing needs no VM boot.
const WITHIN: Duration = Duration::from_secs(30);

fn host_network_is_refused(flavour: ContainerdFlavour) -> Result<()> {
    let w = CriWorld::start("cri-hostnet", flavour)?;
    let c = w.client();
    let mut cfg = w.pod_config("hostnet")?;
    if let Some(ctx) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        ctx.namespace_options = Some(specs::namespaces(NamespaceMode::Node));
    }
    let start = Instant::now();
    let res = w.run_pod_with(&cfg);
    let took = start.elapsed();
    let err = match res {
        Ok(id) => bail!("RunPodSandbox accepted a host-network pod ({id}); husk cannot run it"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("refused after {took:?}: {err}");
    ensure!(took < WITHIN, "refusing took {took:?}");
    ensure!(
        err.contains(REFUSAL) && err.to_lowercase().contains("host-network"),
        "the refusal does not say why: {err}"
    );
    ensure!(
        c.list_pod_sandbox(None)?.is_empty(),
        "a refused pod is still listed"
    );
    w.finish()?;
    Ok(())
}

#[test]
fn cri_host_network_pod_is_refused_containerd_1_6() -> Result<()> {
    host_network_is_refused(ContainerdFlavour::System)
}

#[test]
fn cri_host_network_pod_is_refused_containerd_2() -> Result<()> {
    host_network_is_refused(ContainerdFlavour::V2)
}
