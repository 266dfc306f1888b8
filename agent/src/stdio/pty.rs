//! The host side of a container's terminal: the pty master libcontainer hands over.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Error)]
pub enum PtyError {
    #[error("duplicating the pty master: {0}")]
    Dup(#[source] io::Error),
    #[error("making the pty master non-blocking: {0}")]
    NonBlocking(#[source] nix::Error),
    #[error("registering the pty master with the reactor: {0}")]
    Register(#[source] io::Error),
    #[error("setting the terminal size: {0}")]
    Resize(#[source] nix::Error),
}

/// One handle on a pty master, usable as an async reader (EIO = EOF) and writer.
pub struct PtyMaster {
    fd: AsyncFd<std::fs::File>,
}

impl PtyMaster {
    /// Wraps a duplicate of `master`; each pump gets its own handle.
    pub fn duplicate(master: &OwnedFd) -> Result<Self, PtyError> {
        let fd = master.try_clone().map_err(PtyError::Dup)?;
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(PtyError::NonBlocking)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(PtyError::NonBlocking)?;
        // SAFETY: the File owns the descriptor and keeps it open until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(std::fs::File::from(fd)) }
            .map_err(|e| PtyError::Register(e.into()))?;
        Ok(Self { fd })
    }
}

/// Sets the window size of the terminal behind `master` (TIOCSWINSZ).
pub fn resize(master: &impl AsFd, rows: u16, cols: u16) -> Result<(), PtyError> {
    nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at a live local.
    unsafe { set_window_size(master.as_fd().as_raw_fd(), &size) }.map_err(PtyError::Resize)?;
    Ok(())
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed — the terminal's end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use nix::pty::openpty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_until_the_slave_closes_and_resizes() {
        let pty = openpty(None, None).unwrap();
        let mut reader = PtyMaster::duplicate(&pty.master).unwrap();
        let mut writer = PtyMaster::duplicate(&pty.master).unwrap();
        resize(&pty.master, 40, 120).unwrap();

        let mut slave = std::fs::File::from(pty.slave);
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 120));

        writer.write_all(b"typed\n").await.unwrap();
        let mut line = [0u8; 6];
        slave.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"typed\n");

        slave.write_all(b"out").unwrap();
        drop(slave);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        // The slave echoes input and maps \n to \r\n; the last bytes are ours.
        assert!(got.ends_with(b"out"), "{got:?}");
    }
}
