//! One JSON message plus file descriptors per SEQPACKET datagram.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{HelperError, MAX_MESSAGE_SIZE};

/// At most this many fds travel with one message (stdin, stdout, stderr).
pub const MAX_FDS: usize = 3;

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, HelperError> {
    let bytes = serde_json::to_vec(msg).map_err(HelperError::Encode)?;
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(HelperError::Truncated);
    }
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HelperError> {
    serde_json::from_slice(bytes).map_err(HelperError::Decode)
}

/// Sends one datagram; `io::ErrorKind::WouldBlock` on a full non-blocking socket.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent != bytes.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Receives one datagram and the fds it carries (close-on-exec). `Ok(None)` at end of stream.
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE_SIZE];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS just installed `fd` in our table; nobody else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = msg.bytes;
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message or fds truncated",
        ));
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;
    use crate::helper::{HelperReply, HelperRequest, Operation, PassedStdio};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn request_and_fds_round_trip() {
        let (a, b) = pair();
        let req = HelperRequest {
            operation: Operation::Exec {
                process_file: "/run/p.json".into(),
                bundle: "/b".into(),
            },
            container_id: "c".into(),
            state_root: "/run/state".into(),
            stdio: PassedStdio {
                stdin: false,
                stdout: true,
                stderr: true,
            },
            console_dir: None,
        };
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), &encode(&req).unwrap(), &[w.as_fd(), r.as_fd()]).unwrap();
        let (bytes, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(decode::<HelperRequest>(&bytes).unwrap(), req);
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn end_of_stream_is_none() {
        let (a, b) = pair();
        send(
            a.as_fd(),
            &encode(&HelperReply::Started { pid: 9 }).unwrap(),
            &[],
        )
        .unwrap();
        drop(a);
        let (bytes, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(
            decode::<HelperReply>(&bytes).unwrap(),
            HelperReply::Started { pid: 9 }
        );
        assert!(fds.is_empty());
        assert!(recv(b.as_fd()).unwrap().is_none());
    }
}
