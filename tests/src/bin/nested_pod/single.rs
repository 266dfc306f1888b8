//! The one-pod run: boot, measure the monitor, `echo` in a container; with `--net http`,
//! HTTP to the pod's address too; then tear down (also on failure).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use husk_tests::PlainNs;

use crate::net::{self, Lan};
use crate::pod::{Backend, Pod};
use crate::report::Report;
use crate::{Args, NetMode};

/// What the container prints.
const GREETING: &str = "hello from a nested husk pod";
/// Bound on the container's whole life (create, output, exit).
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(args: &Args) -> Result<Report> {
    let b = Backend::select(args)?;
    let (lan, ns) = if args.net == NetMode::Http {
        let lan = Lan::up()?;
        let ns = lan.pod_namespace(0)?;
        (Some(lan), Some(ns))
    } else {
        (None, None)
    };
    let pod = Pod::boot(
        &b,
        &args.state_dir,
        &args.id,
        ns.as_ref().map(PlainNs::path).as_deref(),
    )
    .await?;
    let result = drive(&b, &pod, ns.as_ref(), args.io).await;
    let diagnostics = pod.diagnostics();
    let stopped = pod.shutdown().await;
    let mut report =
        result.map_err(|e| e.context(format!("{}: VMM output: {diagnostics}", b.name)))?;
    stopped?;
    if let Some(ns) = &ns {
        let left = ns.husk_leftovers()?;
        if !left.is_empty() {
            bail!("the pod's namespace still holds husk's devices after teardown:\n{left}");
        }
        report.extra.push("netns_clean=yes".into());
    }
    drop((ns, lan));
    report.requested = args.backend.clone();
    report.backend = b.name;
    report.reason = b.reason;
    Ok(report)
}

/// Everything between boot and teardown.
async fn drive(b: &Backend, pod: &Pod, ns: Option<&PlainNs>, io: bool) -> Result<Report> {
    let guest_kib = u64::from(b.config.hypervisor.memory_mib) * 1024;
    let (vmm, helpers) = pod.memory(guest_kib)?;
    let (exit_status, output) = pod
        .run_container("c1", &["echo", GREETING], CONTAINER_TIMEOUT)
        .await?;
    let output_done = pod.started.elapsed();
    if output.trim() != GREETING {
        bail!(
            "the container printed {output:?} (exit status {exit_status}), expected {GREETING:?}"
        );
    }
    let mut extra: Vec<String> = pod
        .timeline
        .phases()
        .iter()
        .map(|(name, d)| format!("phase_{name}_ms={}", d.as_millis()))
        .collect();
    if io {
        extra.extend(crate::io::bench(pod).await.context("measuring IO")?);
    }
    if ns.is_some() {
        let took = net::serve_http(pod)
            .await
            .context("HTTP to the pod's address")?;
        extra.push("http=ok".into());
        extra.push(format!("http_ms={}", took.as_millis()));
    }
    Ok(Report {
        requested: String::new(),
        backend: String::new(),
        reason: String::new(),
        launch: pod.launch,
        agent_ready: pod.agent_ready,
        guest_uptime_at_agent_ms: pod.guest_uptime_at_agent_ms,
        output_done,
        output,
        exit_status,
        vmm,
        helpers,
        extra,
    })
}
