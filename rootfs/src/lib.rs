//! Guest initramfs for husk.
//!
//! The guest boots with `husk-agent` as `/init` of an uncompressed newc cpio archive.
//! Everything here is pure Rust so that building the initramfs needs neither root
//! (for the `/dev/console` node) nor an external `cpio` binary:
//!
//! - [`newc`]: a small streaming writer for the "new ASCII" cpio format the kernel unpacks;
//! - [`initramfs`]: the archive layout (directories, console node, `/init`);
//! - [`elf`]: a check that the agent is statically linked (the guest has no dynamic loader).

pub mod elf;
pub mod initramfs;
pub mod newc;

pub use elf::{ElfError, ensure_static_elf};
pub use initramfs::{Entry, Initramfs, InitramfsError};
pub use newc::{NewcError, NewcWriter};
