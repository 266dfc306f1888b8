//! Against a real network namespace (the suite runs as root) and a fake agent behind a
//! hybrid-vsock socket, which echoes what it gets and records the headers it was sent.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use husk_protocol::port_forward::{HEADER_LEN, STATUS_OK, STATUS_REFUSED};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::*;

/// The port the fake guest refuses, as if nothing listened there.
const CLOSED_PORT: u16 = 9;
/// The port for which the fake guest takes the header and then never answers.
const SILENT_PORT: u16 = 10;

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

/// A fresh namespace with `lo` up, removed on drop.
struct TestNs(String);

impl TestNs {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "husk-pf-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "addr", "add", "10.88.0.1/32", "dev", "lo"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        Self(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Serves the hybrid-vsock handshake and the forward header, then echoes.
fn fake_agent(uds: &Path) -> Arc<Mutex<Vec<ForwardHeader>>> {
    let listener = UnixListener::bind(uds).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                assert_eq!(
                    line,
                    format!("CONNECT {}\n", husk_protocol::FORWARD_VSOCK_PORT)
                );
                stream.write_all(b"OK 1\n").await.unwrap();
                let mut bytes = [0u8; HEADER_LEN];
                stream.read_exact(&mut bytes).await.unwrap();
                let header = ForwardHeader::decode(&bytes).unwrap();
                record.lock().unwrap().push(header);
                if header.port == SILENT_PORT {
                    // A hostile guest: holds the connection, says nothing.
                    std::future::pending::<()>().await;
                }
                if header.port == CLOSED_PORT {
                    stream.write_all(&[STATUS_REFUSED]).await.unwrap();
                    return;
                }
                stream.write_all(&[STATUS_OK]).await.unwrap();
                let (mut r, mut w) = tokio::io::split(stream);
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    seen
}

/// Dials `addr` from inside the namespace, sends `data`, and returns what came back (or the
/// error that ended the connection).
async fn dial(ns: &Path, addr: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let ns = NetNs::open(ns).unwrap();
    tokio::task::spawn_blocking(move || {
        ns.run_in(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut writer = s.try_clone()?;
            let sending = std::thread::spawn(move || {
                let sent = writer.write_all(&data);
                let _ = writer.shutdown(Shutdown::Write);
                sent
            });
            let mut back = Vec::new();
            let read = s.read_to_end(&mut back);
            let _ = sending.join();
            read.map(|_| back)
        })
    })
    .await
    .unwrap()
    .map_err(|e| match e {
        NetworkError::InNamespace(e) => e,
        other => panic!("{other}"),
    })
}

fn start(ns: &TestNs, dir: &tempfile::TempDir) -> (PortForwarder, Arc<Mutex<Vec<ForwardHeader>>>) {
    let uds = dir.path().join("vsock.sock");
    let seen = fake_agent(&uds);
    let netns = NetNs::open(&ns.path()).unwrap();
    (PortForwarder::start(&netns, uds, &log()).unwrap(), seen)
}

#[tokio::test]
async fn loopback_connections_on_any_port_reach_the_agent_with_their_port() {
    let (ns, dir) = (TestNs::new(), tempfile::tempdir().unwrap());
    let (_forwarder, seen) = start(&ns, &dir);
    let data: Vec<u8> = (0..1 << 20)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    let path = ns.path();
    let v4 = dial(&path, (Ipv4Addr::LOCALHOST, 4321).into(), data.clone());
    assert!(v4.await.unwrap() == data, "IPv4 echo differs");
    let v6 = dial(&path, (Ipv6Addr::LOCALHOST, 80).into(), b"hello".to_vec());
    assert_eq!(v6.await.unwrap(), b"hello");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ForwardHeader {
                family: Family::V4,
                port: 4321
            },
            ForwardHeader {
                family: Family::V6,
                port: 80
            }
        ]
    );
}

#[tokio::test]
async fn a_port_the_guest_refuses_ends_the_clients_connection_without_data() {
    let (ns, dir) = (TestNs::new(), tempfile::tempdir().unwrap());
    let (_forwarder, seen) = start(&ns, &dir);
    let got = dial(
        &ns.path(),
        (Ipv4Addr::LOCALHOST, CLOSED_PORT).into(),
        vec![1; 10],
    )
    .await;
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(&got, Ok(v) if v.is_empty()),
        "{got:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn only_loopback_is_taken_and_nothing_once_the_forwarder_is_gone() {
    let (ns, dir) = (TestNs::new(), tempfile::tempdir().unwrap());
    let (forwarder, seen) = start(&ns, &dir);
    // An address of the namespace that is not loopback: not steered, nobody listens.
    let other = dial(
        &ns.path(),
        (Ipv4Addr::new(10, 88, 0, 1), 4321).into(),
        vec![],
    )
    .await;
    assert_eq!(
        other.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    drop(forwarder);
    let after = dial(&ns.path(), (Ipv4Addr::LOCALHOST, 4321).into(), vec![]).await;
    assert_eq!(
        after.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_guest_that_never_answers_costs_the_client_a_bounded_wait() {
    let (ns, dir) = (TestNs::new(), tempfile::tempdir().unwrap());
    let (_forwarder, seen) = start(&ns, &dir);
    let started = std::time::Instant::now();
    let got = dial(
        &ns.path(),
        (Ipv4Addr::LOCALHOST, SILENT_PORT).into(),
        vec![1; 10],
    )
    .await;
    let waited = started.elapsed();
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(&got, Ok(v) if v.is_empty()),
        "{got:?}"
    );
    // The status wait is bounded (10 s); `dial` itself would give up after 20 s.
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}
