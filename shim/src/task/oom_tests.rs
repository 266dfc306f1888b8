//! TaskOOM against the fake guest: before an exit, as it happens, once per kill, and
//! bounded against a guest that floods counts.

use std::time::Duration;

use containerd_shim_protos::api::Status as ApiStatus;
use containerd_shim_protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};

use super::tests::world;

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_oom_kill_is_published_before_the_exit_and_only_once() {
    let mut w = world();
    w.running("c1").await;
    *w.guest.oom_kills.lock().unwrap() = 1;
    w.shim.exec(&w.exec_req("c1", "e1")).await.unwrap();
    w.shim.start("c1", "e1").await.unwrap();
    w.guest.exit("c1", "e1", 137);
    tokio::time::timeout(LONG, w.shim.wait("c1", "e1"))
        .await
        .unwrap()
        .unwrap();
    // The same count again at the init's exit is no new OOM kill.
    w.guest.exit("c1", "", 137);
    tokio::time::timeout(LONG, w.shim.wait("c1", ""))
        .await
        .unwrap()
        .unwrap();
    let topics = w.events.topics().await;
    let ooms: Vec<usize> = (0..topics.len())
        .filter(|i| topics[*i] == TASK_OOM_EVENT_TOPIC)
        .collect();
    let first_exit = topics.iter().position(|t| *t == TASK_EXIT_EVENT_TOPIC);
    assert_eq!(ooms.len(), 1, "{topics:?}");
    assert!(Some(ooms[0]) < first_exit, "{topics:?}");
}

#[tokio::test]
async fn an_oom_kill_in_a_running_container_is_published_at_once() {
    let mut w = world();
    w.running("c1").await;
    *w.guest.oom_kills.lock().unwrap() = 1;
    let start = std::time::Instant::now();
    let mut topics = Vec::new();
    while !topics.contains(&TASK_OOM_EVENT_TOPIC) {
        assert!(
            start.elapsed() < LONG,
            "no TaskOOM while the container runs"
        );
        topics.extend(w.events.topics().await);
    }
    assert_eq!(w.status("c1", ""), Ok(ApiStatus::RUNNING));
    // Reported once: the same count at the exit is no new kill.
    w.guest.exit("c1", "", 0);
    tokio::time::timeout(LONG, w.shim.wait("c1", ""))
        .await
        .unwrap()
        .unwrap();
    topics.extend(w.events.topics().await);
    assert_eq!(
        topics
            .iter()
            .filter(|t| **t == TASK_OOM_EVENT_TOPIC)
            .count(),
        1,
        "{topics:?}"
    );
}

#[tokio::test]
async fn a_guest_flooding_oom_counts_gets_one_round_a_second() {
    let mut w = world();
    w.running("c1").await;
    *w.guest.oom_flood.lock().unwrap() = true;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ooms = w
        .events
        .topics()
        .await
        .iter()
        .filter(|t| **t == TASK_OOM_EVENT_TOPIC)
        .count();
    assert!((1..=4).contains(&ooms), "{ooms} TaskOOM events in 2.5 s");
}
