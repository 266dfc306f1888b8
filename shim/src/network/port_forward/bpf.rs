//! The few `bpf(2)` commands the port forwarder needs, at the syscall edge: create a
//! one-slot-per-family socket map, put a socket in it, load a program, link it to a network
//! namespace. Each attribute block is the leading part of the kernel's `union bpf_attr` for
//! that command; the kernel zero-fills the rest.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
/// Room for the verifier's explanation when a load fails.
const VERIFIER_LOG_LEN: usize = 64 * 1024;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out prefix of `union bpf_attr` for `cmd`, and
    // its size is passed along; pointers inside it point at live buffers of the caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn into_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    // Open descriptors are never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// A socket map of `entries` slots, keyed by u32, holding sockets.
pub fn create_sockmap(entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_SOCKMAP,
        key_size: 4,
        value_size: 8,
        max_entries: entries,
        map_flags: 0,
    };
    into_fd(bpf(BPF_MAP_CREATE, &mut attr)?)
}

/// Puts `socket` (a listening TCP socket) in slot `key` of a socket map.
pub fn sockmap_set(map: BorrowedFd<'_>, key: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
    let value = u64::from(raw(socket));
    let mut attr = MapUpdate {
        map_fd: raw(map),
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Loads an `sk_lookup` program; a refusal carries the verifier's log.
pub fn load_sk_lookup(insns: &[Insn], name: &CStr) -> io::Result<OwnedFd> {
    const LICENSE: &CStr = c"GPL";
    let mut log = vec![0u8; VERIFIER_LOG_LEN];
    let mut prog_name = [0u8; 16];
    let name = name.to_bytes();
    let len = name.len().min(prog_name.len() - 1);
    prog_name[..len].copy_from_slice(&name[..len]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_LOOKUP,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).unwrap_or(u32::MAX),
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: BPF_SK_LOOKUP,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => into_fd(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {verifier}"),
            ))
        }
    }
}

/// Links an `sk_lookup` program to the network namespace `netns`; the link (and the
/// program's effect) lasts as long as the returned descriptor is open.
pub fn link_to_netns(prog: BorrowedFd<'_>, netns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: raw(prog),
        target_fd: raw(netns),
        attach_type: BPF_SK_LOOKUP,
        flags: 0,
    };
    into_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}
