//! Host clients of the hybrid vsock socket: the `CONNECT <port>` line parser and the
//! non-blocking line reader, with the input split across writes at a fuzzer-chosen point.
#![no_main]

#[path = "../common/deadline.rs"]
mod deadline;

use std::io::Write;
use std::os::unix::net::UnixStream;

use husk_vsock::hybrid_socket::{ConnectLineReader, parse_connect_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _deadline = deadline::Deadline::arm();
    if let Ok(port) = parse_connect_line(data) {
        // Only `CONNECT <decimal u32>` parses (leading zeros allowed), to the number it says.
        let text = std::str::from_utf8(data).expect("a valid line is ASCII");
        let text = text.strip_suffix('\r').unwrap_or(text);
        let digits = text
            .strip_prefix("CONNECT ")
            .expect("the prefix is required");
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        assert_eq!(digits.parse::<u32>(), Ok(port), "{text:?}");
    }
    let Ok((mut client, server)) = UnixStream::pair() else {
        return;
    };
    server.set_nonblocking(true).expect("non-blocking");
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let mut reader = ConnectLineReader::default();
    let mut done = false;
    for chunk in [&data[..split], &data[split..]] {
        let _ = client.write_all(chunk);
        match reader.poll(&server) {
            Ok(Some(_)) | Err(_) => {
                done = true;
                break;
            }
            Ok(None) => {}
        }
    }
    if !done {
        drop(client);
        // After EOF the reader must finish one way or the other.
        assert!(!matches!(reader.poll(&server), Ok(None)));
    }
});
