//! The shim's task API, driven directly the way containerd drives it: `start` verb, then
//! ttrpc requests, with a fake containerd events service recording what the shim
//! publishes. Checks the semantics ctr cannot reach: Wait before Start, error codes,
//! event order, TaskExit only after the output was copied, both task API names, and the
//! shim exiting after its last container.

mod shim_common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::Message;
use husk_tests::{Runtime, TestBed};
use shim_common::*;
use ttrpc::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_api_semantics_and_event_order() -> Result<()> {
    let bed = TestBed::start("shimapi", Runtime::Husk)?;
    let containerd = FakeContainerd::start(&bed).await?;
    let events = containerd.events.clone();

    let c1 = bed.id("c1");
    let c2 = bed.id("c2");
    let pod = bed.id("pod");
    let b1 = make_bundle(
        &bed,
        &pod,
        &c1,
        &["sh", "-c", "echo hello; exec sleep 1000"],
    )?;
    // Output right before the exit: TaskExit must wait until it has all been copied.
    let b2 = make_bundle(
        &bed,
        &pod,
        &c2,
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero; echo tail-line; exit 4",
        ],
    )?;
    let shim = start_shim(&bed, &b1, &c1, &containerd.socket).await?;
    let t = &shim.client;

    let mut out1 = FifoReader::create(bed.dir().join("c1.out"))?;
    let err1 = FifoReader::create(bed.dir().join("c1.err"))?;
    let created = t
        .create(ctx(), &create_request(&c1, &b1, &out1.path, &err1.path))
        .await?;
    ensure!(created.pid > 0, "Create returned pid 0");
    out1.start()?;
    let state = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        state.status.value() == Status::CREATED as i32,
        "state after create: {:?}",
        state.status
    );

    // Errors containerd relies on.
    let again = t
        .create(ctx(), &create_request(&c1, &b1, &out1.path, &err1.path))
        .await;
    ensure!(
        code_of(again) == Some(Code::ALREADY_EXISTS),
        "second Create of {c1} is not ALREADY_EXISTS"
    );
    let missing = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = "nope".into()))
        .await;
    ensure!(
        code_of(missing) == Some(Code::NOT_FOUND),
        "State of an unknown id is not NOT_FOUND"
    );
    let early_exec = t.exec(ctx(), &exec_request(&c1, "e0", &["true"])).await;
    ensure!(
        code_of(early_exec) == Some(Code::FAILED_PRECONDITION),
        "Exec before Start is not FAILED_PRECONDITION"
    );
    let paused = t
        .pause(ctx(), &req(|r: &mut PauseRequest| r.id = c1.clone()))
        .await;
    // As the runc shim: "cannot pause task in created state".
    ensure!(
        code_of(paused) == Some(Code::FAILED_PRECONDITION),
        "Pause before Start is not FAILED_PRECONDITION"
    );

    // Wait blocks even before Start.
    let waiter = {
        let t = t.clone();
        let c1 = c1.clone();
        tokio::spawn(async move {
            t.wait(
                ttrpc::context::Context::default(),
                &req(|r: &mut WaitRequest| r.id = c1),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!waiter.is_finished(), "Wait returned before Start");

    t.start(ctx(), &req(|r: &mut StartRequest| r.id = c1.clone()))
        .await?;
    let twice = t
        .start(ctx(), &req(|r: &mut StartRequest| r.id = c1.clone()))
        .await;
    ensure!(
        code_of(twice) == Some(Code::FAILED_PRECONDITION),
        "second Start is not FAILED_PRECONDITION"
    );

    // An exec: added, started, exits with its code; duplicates refused; kill after exit ok.
    t.exec(ctx(), &exec_request(&c1, "e1", &["sh", "-c", "exit 5"]))
        .await?;
    for bad in ["../e", "e/1", ".e", ""] {
        let refused = t.exec(ctx(), &exec_request(&c1, bad, &["true"])).await;
        ensure!(
            code_of(refused) == Some(Code::INVALID_ARGUMENT),
            "exec id {bad:?} is not INVALID_ARGUMENT"
        );
    }
    let bad_create = t
        .create(ctx(), &create_request("../c9", &b1, &out1.path, &err1.path))
        .await;
    ensure!(
        code_of(bad_create) == Some(Code::INVALID_ARGUMENT),
        "container id ../c9 is not INVALID_ARGUMENT"
    );
    let dup = t.exec(ctx(), &exec_request(&c1, "e1", &["true"])).await;
    ensure!(
        code_of(dup) == Some(Code::ALREADY_EXISTS),
        "duplicate exec id is not ALREADY_EXISTS"
    );
    t.start(
        ctx(),
        &req(|r: &mut StartRequest| {
            r.id = c1.clone();
            r.exec_id = "e1".into()
        }),
    )
    .await?;
    let e1 = t
        .wait(
            ctx(),
            &req(|r: &mut WaitRequest| {
                r.id = c1.clone();
                r.exec_id = "e1".into()
            }),
        )
        .await?;
    ensure!(
        e1.exit_status == 5,
        "exec exit status {} (expected 5)",
        e1.exit_status
    );
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.exec_id = "e1".into();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let deleted = t
        .delete(
            ctx(),
            &req(|r: &mut DeleteRequest| {
                r.id = c1.clone();
                r.exec_id = "e1".into()
            }),
        )
        .await?;
    ensure!(
        deleted.exit_status == 5,
        "deleted exec reports {}",
        deleted.exit_status
    );

    let pids = t
        .pids(ctx(), &req(|r: &mut PidsRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        !pids.processes.is_empty(),
        "Pids of a running container is empty"
    );
    let running_delete = t
        .delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c1.clone()))
        .await;
    ensure!(
        code_of(running_delete) == Some(Code::FAILED_PRECONDITION),
        "Delete of a running task is not FAILED_PRECONDITION"
    );

    // containerd 1.6 dials the v2 name; the same service must answer there.
    let v2 = shim
        .raw
        .request(ttrpc::Request {
            service: "containerd.task.v2.Task".into(),
            method: "Connect".into(),
            timeout_nano: RPC_TIMEOUT_NANOS,
            payload: ConnectRequest::new().write_to_bytes()?,
            ..Default::default()
        })
        .await
        .context("Connect on containerd.task.v2.Task")?;
    let v2 = ConnectResponse::parse_from_bytes(&v2.payload)?;
    ensure!(v2.shim_pid > 0, "v2 Connect answered shim pid 0");

    // A second container in the same pod: its output completes before its TaskExit.
    let mut out2 = FifoReader::create(bed.dir().join("c2.out"))?;
    let err2 = FifoReader::create(bed.dir().join("c2.err"))?;
    let created2 = t
        .create(ctx(), &create_request(&c2, &b2, &out2.path, &err2.path))
        .await?;
    ensure!(
        created2.pid == created.pid,
        "second container of the pod got another VM (pid {} vs {})",
        created2.pid,
        created.pid
    );
    out2.start()?;
    t.start(ctx(), &req(|r: &mut StartRequest| r.id = c2.clone()))
        .await?;
    let w2 = t
        .wait(ctx(), &req(|r: &mut WaitRequest| r.id = c2.clone()))
        .await?;
    ensure!(w2.exit_status == 4, "c2 exit status {}", w2.exit_status);
    let (data2, eof2) = out2.finish()?;
    ensure!(
        data2.len() == 3_000_000 + "tail-line\n".len(),
        "c2 stdout has {} bytes",
        data2.len()
    );
    ensure!(
        data2.ends_with(b"tail-line\n"),
        "c2 stdout lost its last line"
    );
    let (exit2, exit2_at) = wait_for(|| events.exit_of(&c2)).await?;
    ensure!(
        exit2.exit_status == 4,
        "TaskExit of c2 says {}",
        exit2.exit_status
    );
    ensure!(
        eof2 <= exit2_at,
        "TaskExit of c2 arrived before its stdout was complete"
    );
    t.delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c2.clone()))
        .await?;

    // Kill the first container: the early Wait returns 137; kill after exit is fine.
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let waited = tokio::time::timeout(RPC_TIMEOUT, waiter).await???;
    ensure!(
        waited.exit_status == 137,
        "Wait after SIGKILL returned {}",
        waited.exit_status
    );
    t.kill(
        ctx(),
        &req(|r: &mut KillRequest| {
            r.id = c1.clone();
            r.signal = SIGKILL
        }),
    )
    .await?;
    let (out, _) = out1.finish()?;
    ensure!(
        out == b"hello\n",
        "c1 stdout {:?}",
        String::from_utf8_lossy(&out)
    );
    let state = t
        .state(ctx(), &req(|r: &mut StateRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        state.status.value() == Status::STOPPED as i32 && state.exit_status == 137,
        "state after kill: {state:?}"
    );
    let deleted = t
        .delete(ctx(), &req(|r: &mut DeleteRequest| r.id = c1.clone()))
        .await?;
    ensure!(
        deleted.exit_status == 137,
        "Delete reports {}",
        deleted.exit_status
    );

    // Last container gone: the shim stops the VM and exits, removing its socket.
    let gone = wait_for(|| (!shim.socket.exists()).then_some(())).await;
    ensure!(
        gone.is_ok(),
        "shim socket {:?} still exists after the last Delete",
        shim.socket
    );

    let expected_c1 = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let got = events.topics_for(&c1);
    ensure!(
        got == expected_c1,
        "events for {c1}: {got:?}, expected {expected_c1:?}"
    );
    let expected_c2 = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let got = events.topics_for(&c2);
    ensure!(
        got == expected_c2,
        "events for {c2}: {got:?}, expected {expected_c2:?}"
    );

    drop(shim);
    containerd.shutdown().await?;
    bed.finish()?;
    Ok(())
}
