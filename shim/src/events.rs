//! Publishes task events to containerd, in order, over its ttrpc events service
//! (`TTRPC_ADDRESS`). One task drains a bounded queue so events never overtake each other;
//! delivery failures are retried a few times and then logged, never fatal.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use slog::{Logger, debug, warn};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Events in flight before publishers wait; containerd drains far faster than pods produce.
const QUEUE_DEPTH: usize = 256;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 3;

struct Queued {
    topic: &'static str,
    event: Box<dyn MessageDyn>,
    at: Timestamp,
}

enum Item {
    Event(Queued),
    /// Answered once everything queued before it was handled.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Item>,
}

/// Owns the delivery task.
pub struct PublisherTask {
    handle: JoinHandle<()>,
}

impl Publisher {
    /// `ttrpc_address` is containerd's ttrpc socket; `None` (e.g. in tests) logs and drops.
    pub fn spawn(
        ttrpc_address: Option<String>,
        namespace: String,
        log: Logger,
    ) -> (Self, PublisherTask) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = tokio::spawn(deliver(rx, ttrpc_address, namespace, log));
        (Self { tx }, PublisherTask { handle })
    }

    pub async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let queued = Queued {
            topic,
            event,
            at: now(),
        };
        // Fails only once the delivery task ended, i.e. the shim is exiting.
        let _ = self.tx.send(Item::Event(queued)).await;
    }

    /// Waits (bounded) until everything published so far has been delivered or given up on.
    pub async fn flush(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Item::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(timeout, flushed).await;
    }
}

impl PublisherTask {
    pub fn abort(self) {
        self.handle.abort();
    }
}

pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

async fn deliver(
    mut rx: mpsc::Receiver<Item>,
    address: Option<String>,
    namespace: String,
    log: Logger,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let q = match item {
            Item::Event(q) => q,
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let Some(address) = &address else {
            debug!(log, "no TTRPC_ADDRESS: event not sent"; "topic" => q.topic);
            continue;
        };
        let req = forward_request(&q, &namespace);
        let mut sent = false;
        for attempt in 1..=ATTEMPTS {
            if client.is_none() {
                client = connect(address)
                    .await
                    .map_err(|e| warn!(log, "connecting to containerd events"; "error" => %e))
                    .ok();
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_timeout(
                    i64::try_from(FORWARD_TIMEOUT.as_nanos()).unwrap_or(i64::MAX),
                );
                match c.forward(ctx, &req).await {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        warn!(log, "publishing event failed"; "topic" => q.topic, "attempt" => attempt, "error" => %e);
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
        }
        if !sent {
            warn!(log, "event dropped after retries"; "topic" => q.topic);
        }
    }
}

async fn connect(address: &str) -> Result<EventsClient, ttrpc::Error> {
    let addr = if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    let client = tokio::time::timeout(FORWARD_TIMEOUT, Client::connect(&addr))
        .await
        .map_err(|_| ttrpc::Error::Others(format!("connecting to {addr} timed out")))??;
    Ok(EventsClient::new(client))
}

fn forward_request(q: &Queued, namespace: &str) -> ForwardRequest {
    let mut any = Any::new();
    // containerd resolves event payloads by the bare protobuf full name.
    any.type_url = q.event.descriptor_dyn().full_name().to_string();
    any.value = q.event.write_to_bytes_dyn().unwrap_or_default();
    let mut envelope = Envelope::new();
    envelope.timestamp = MessageField::some(q.at.clone());
    envelope.namespace = namespace.to_string();
    envelope.topic = q.topic.to_string();
    envelope.event = MessageField::some(any);
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(envelope);
    req
}

/// What the shim published, in order, for tests of the task state machine.
#[cfg(test)]
pub struct Recorded {
    rx: mpsc::Receiver<Item>,
}

#[cfg(test)]
impl Publisher {
    /// A publisher whose events stay here for the test to read.
    pub fn recording() -> (Self, Recorded) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        (Self { tx }, Recorded { rx })
    }
}

#[cfg(test)]
impl Recorded {
    /// The next event's topic and message, if one is published within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(&'static str, Box<dyn MessageDyn>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Item::Event(q))) => return Some((q.topic, q.event)),
                Ok(Some(Item::Flush(done))) => {
                    let _ = done.send(());
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The topics of every event published so far.
    pub async fn topics(&mut self) -> Vec<&'static str> {
        let mut topics = Vec::new();
        while let Some((topic, _)) = self.next(Duration::from_millis(50)).await {
            topics.push(topic);
        }
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::TaskStart;

    #[test]
    fn envelope_carries_topic_namespace_and_typed_payload() {
        let mut ev = TaskStart::new();
        ev.container_id = "c1".into();
        ev.pid = 42;
        let q = Queued {
            topic: "/tasks/start",
            event: Box::new(ev),
            at: now(),
        };
        let req = forward_request(&q, "k8s.io");
        let env = req.envelope.as_ref().unwrap();
        assert_eq!(env.topic, "/tasks/start");
        assert_eq!(env.namespace, "k8s.io");
        let any = env.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskStart");
        let back: TaskStart =
            containerd_shim_protos::protobuf::Message::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.container_id.as_str(), back.pid), ("c1", 42));
    }
}
