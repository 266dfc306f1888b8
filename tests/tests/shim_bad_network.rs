//! Bad pod networks are refused at the pod's first Create (what containerd's
//! RunPodSandbox turns into), within a bounded time, by name, and leave nothing behind:
//! a network namespace path that does not exist, a path that is no network namespace, an
//! interface husk cannot carry (a tun device: no MAC, link type `none`), and more
//! interfaces than a VM takes (nine up veth ends). The namespaces are made with `ip`, as CNI would leave them.

mod shim_common;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use containerd_shim_protos::api::*;
use husk_tests::{PlainNs, Runtime, TestBed};
use shim_common::*;

/// Far above what refusing takes (milliseconds); a hang fails the test instead of the CI.
const REFUSED_WITHIN: Duration = Duration::from_secs(60);

/// Creates pod `case`'s first container with its network namespace at `netns`; the
/// refusal's message.
async fn refusal(
    bed: &TestBed,
    containerd: &FakeContainerd,
    case: &str,
    netns: &str,
) -> Result<String> {
    let (pod, id) = (bed.id(&format!("{case}-pod")), bed.id(case));
    let bundle = make_bundle_with(bed, &pod, &id, &["true"], |spec| {
        for ns in spec["linux"]["namespaces"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if ns["type"] == "network" {
                ns["path"] = serde_json::json!(netns);
            }
        }
    })?;
    let (out, err) = (bundle.join("stdout"), bundle.join("stderr"));
    let shim = start_shim(bed, &bundle, &id, &containerd.socket).await?;
    let created = tokio::time::timeout(
        REFUSED_WITHIN,
        shim.client
            .create(ctx(), &create_request(&id, &bundle, &out, &err)),
    )
    .await
    .map_err(|_| anyhow!("{case}: Create took more than {REFUSED_WITHIN:?}"))?;
    let message = match created {
        Ok(_) => return Err(anyhow!("{case}: Create succeeded with netns {netns}")),
        Err(ttrpc::Error::RpcStatus(s)) => s.message().to_owned(),
        Err(e) => return Err(anyhow!("{case}: Create failed without a status: {e}")),
    };
    // As containerd does after a failed create: the shim goes.
    let _ = shim
        .client
        .shutdown(ctx(), &req(|r: &mut ShutdownRequest| r.id = id.clone()))
        .await;
    wait_for(|| (!shim.socket.exists()).then_some(()))
        .await
        .with_context(|| format!("{case}: the shim did not exit after the refusal"))?;
    Ok(message)
}

/// [`refusal`] for namespace `ns`, whose message must say each of `says`; nothing of
/// husk's may remain in the namespace.
async fn refused_leaving_nothing(
    bed: &TestBed,
    containerd: &FakeContainerd,
    case: &str,
    ns: &PlainNs,
    says: &[&str],
) -> Result<()> {
    let message = refusal(bed, containerd, case, &ns.path().display().to_string()).await?;
    ensure!(
        says.iter().all(|s| message.contains(s)),
        "{case}: {message:?} does not say {says:?}"
    );
    let left = ns.husk_leftovers()?;
    ensure!(left.is_empty(), "{case}: left in the namespace: {left}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pod_networks_are_refused_by_name_and_leave_nothing() -> Result<()> {
    let bed = TestBed::start("shimbadnet", Runtime::Husk)?;
    let containerd = FakeContainerd::start(&bed).await?;
    let tag = std::process::id();

    let missing = format!("/run/netns/husk-missing-{tag}");
    let message = refusal(&bed, &containerd, "missing", &missing).await?;
    ensure!(
        message.contains(&missing) && message.contains("cannot be opened"),
        "a missing namespace: {message:?}"
    );

    let not_ns = bed.dir().join("not-a-namespace");
    std::fs::write(&not_ns, "")?;
    let not_ns = not_ns.display().to_string();
    let message = refusal(&bed, &containerd, "notns", &not_ns).await?;
    ensure!(
        message.contains(&not_ns) && message.contains("is not a network namespace"),
        "a file that is no namespace: {message:?}"
    );

    let tun = PlainNs::empty(&format!("t{tag}"))?;
    tun.ip("tuntap add dev tun7 mode tun")?;
    tun.ip("link set tun7 up")?;
    refused_leaving_nothing(
        &bed,
        &containerd,
        "tun",
        &tun,
        &["tun7", "cannot be carried"],
    )
    .await?;

    // Nine veth pairs with one end up: nine Ethernet interfaces husk would take.
    let many = PlainNs::empty(&format!("m{tag}"))?;
    for i in 0..9 {
        many.ip(&format!("link add v{i} type veth peer name p{i}"))?;
        many.ip(&format!("link set v{i} up"))?;
    }
    refused_leaving_nothing(
        &bed,
        &containerd,
        "many",
        &many,
        &["9 network interfaces", "at most 8"],
    )
    .await?;

    containerd.shutdown().await?;
    // No VM, helper, mount, pod directory or cgroup of any of the four pods.
    bed.finish()?;
    Ok(())
}
