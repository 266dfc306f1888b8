use super::*;
use husk_protocol::port_forward::MAGIC;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::TcpListener;

fn log() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn header(family: Family, port: u16) -> [u8; HEADER_LEN] {
    ForwardHeader { family, port }.encode()
}

/// Starts `forward` on one end of an in-memory pipe; the test is the host on the other end.
fn start(admitted: bool) -> (DuplexStream, tokio::task::JoinHandle<ForwardOutcome>) {
    let (host, agent_end) = duplex(64 * 1024);
    let task = tokio::spawn(async move { forward(agent_end, admitted, &log()).await });
    (host, task)
}

/// An echo server that also reports how many bytes it saw.
async fn echo_server(addr: SocketAddr) -> (u16, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        usize::try_from(n).unwrap()
    });
    (port, task)
}

/// Sends `len` patterned bytes through the forward and checks the echo byte for byte.
async fn round_trip(host: &mut DuplexStream, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    let (mut r, mut w) = tokio::io::split(host);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let ((), got) = tokio::join!(send, recv);
    got.unwrap();
    assert!(back == data, "echo differs from what was sent");
}

#[tokio::test]
async fn carries_a_connection_to_a_loopback_only_server_both_ways() {
    let (port, server) = echo_server((Ipv4Addr::LOCALHOST, 0).into()).await;
    let (mut host, task) = start(true);
    host.write_all(&header(Family::V4, port)).await.unwrap();
    assert_eq!(host.read_u8().await.unwrap(), STATUS_OK);
    round_trip(&mut host, 1 << 20).await;
    assert_eq!(task.await.unwrap(), ForwardOutcome::Carried);
    assert_eq!(server.await.unwrap(), 1 << 20);
}

#[tokio::test]
async fn an_ipv4_client_reaches_a_server_on_ipv6_loopback_only() {
    let (port, server) = echo_server((Ipv6Addr::LOCALHOST, 0).into()).await;
    let (mut host, task) = start(true);
    host.write_all(&header(Family::V4, port)).await.unwrap();
    assert_eq!(host.read_u8().await.unwrap(), STATUS_OK);
    round_trip(&mut host, 4096).await;
    assert_eq!(task.await.unwrap(), ForwardOutcome::Carried);
    assert_eq!(server.await.unwrap(), 4096);
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_refused() {
    // Bound but not listening: nobody else can take the port while the test runs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let (mut host, task) = start(true);
    host.write_all(&header(Family::V4, port)).await.unwrap();
    assert_eq!(host.read_u8().await.unwrap(), STATUS_REFUSED);
    assert_eq!(task.await.unwrap(), ForwardOutcome::Refused(STATUS_REFUSED));
}

#[tokio::test]
async fn a_bad_header_is_answered_and_nothing_is_dialled() {
    let (mut host, task) = start(true);
    let mut bad = header(Family::V4, 80);
    bad[..MAGIC.len()].copy_from_slice(b"GET / HT");
    host.write_all(&bad).await.unwrap();
    assert_eq!(host.read_u8().await.unwrap(), STATUS_BAD_HEADER);
    assert_eq!(
        task.await.unwrap(),
        ForwardOutcome::Refused(STATUS_BAD_HEADER)
    );
}

#[tokio::test]
async fn over_the_connection_bound_the_host_is_told_busy() {
    let (port, _server) = echo_server((Ipv4Addr::LOCALHOST, 0).into()).await;
    let (mut host, task) = start(false);
    host.write_all(&header(Family::V4, port)).await.unwrap();
    assert_eq!(host.read_u8().await.unwrap(), STATUS_BUSY);
    assert_eq!(task.await.unwrap(), ForwardOutcome::Refused(STATUS_BUSY));
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_short_header_times_out() {
    let (mut host, task) = start(true);
    host.write_all(&MAGIC[..3]).await.unwrap();
    assert_eq!(task.await.unwrap(), ForwardOutcome::NoHeader);
    drop(host);
}
