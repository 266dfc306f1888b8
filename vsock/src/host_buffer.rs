//! Guest → host bytes the host socket could not take yet.
//!
//! Normally guest data goes straight from guest memory into the host socket; only what the
//! socket refuses (`EAGAIN`) lands here. Its size is bounded by the credit window
//! ([`super::credit::HOST_BUF_ALLOC`]), enforced by the caller before pushing.

use std::io::{self, ErrorKind, Write};

use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;

/// Capacity kept after the buffer drains; larger allocations are released so an idle
/// connection does not pin a full window of memory.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// FIFO of bytes waiting for the host socket.
#[derive(Debug, Default)]
pub struct HostBuffer {
    bytes: Vec<u8>,
    /// Index of the first byte not yet written.
    head: usize,
}

impl HostBuffer {
    pub fn is_empty(&self) -> bool {
        self.head == self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// Appends a copy of `src` (guest memory).
    pub fn push_volatile<B: BitmapSlice>(&mut self, src: &VolatileSlice<'_, B>) {
        self.compact();
        let start = self.bytes.len();
        self.bytes.resize(start + src.len(), 0);
        let copied = src.copy_to(&mut self.bytes[start..]);
        self.bytes.truncate(start + copied);
    }

    /// Writes as much as the (non-blocking) writer takes. Returns the bytes written; stops
    /// quietly at `WouldBlock`, fails on any other error.
    pub fn flush_to<W: Write>(&mut self, out: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match out.write(&self.bytes[self.head..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.head += n;
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            self.clear();
        }
        Ok(total)
    }

    /// Drops everything (the host side is gone).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.head = 0;
        if self.bytes.capacity() > RETAINED_CAPACITY {
            self.bytes = Vec::new();
        }
    }

    /// Moves unwritten bytes to the front so the vector does not grow with written ones.
    fn compact(&mut self) {
        if self.head > 0 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, then reports `WouldBlock`.
    struct Throttled {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn push(buf: &mut HostBuffer, data: &[u8]) {
        let mut owned = data.to_vec();
        buf.push_volatile(&VolatileSlice::from(owned.as_mut_slice()));
    }

    #[test]
    fn keeps_order_across_partial_writes() {
        let mut buf = HostBuffer::default();
        push(&mut buf, b"hello ");
        push(&mut buf, b"world");
        let mut out = Throttled {
            got: Vec::new(),
            room: 4,
        };
        assert_eq!(buf.flush_to(&mut out).unwrap(), 4);
        assert_eq!(buf.len(), 7);
        push(&mut buf, b"!");
        out.room = 100;
        assert_eq!(buf.flush_to(&mut out).unwrap(), 8);
        assert!(buf.is_empty());
        assert_eq!(out.got, b"hello world!");
    }

    #[test]
    fn releases_large_allocations_once_drained() {
        let mut buf = HostBuffer::default();
        push(&mut buf, &vec![7u8; RETAINED_CAPACITY * 4]);
        let mut out = Throttled {
            got: Vec::new(),
            room: usize::MAX,
        };
        buf.flush_to(&mut out).unwrap();
        assert!(buf.is_empty());
        assert!(buf.bytes.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn hard_write_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut buf = HostBuffer::default();
        push(&mut buf, b"x");
        assert_eq!(
            buf.flush_to(&mut Broken).unwrap_err().kind(),
            ErrorKind::BrokenPipe
        );
    }
}
