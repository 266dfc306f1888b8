//! Steers every TCP connection to the pod namespace's loopback, whatever its port, to one
//! listening socket per address family: an `sk_lookup` eBPF program (the kernel's
//! "bind to all ports" hook, 5.9+) linked to the pod's network namespace. The listener then
//! learns the dialled port from the accepted socket's local address.
//!
//! In a husk pod nothing else listens in that namespace (the pod's processes run in the VM),
//! and frames for the pod's own addresses never reach its stack (tc redirects them to the
//! tap), so only loopback connections are taken and all of them are.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::bpf::{self, Insn};

/// Socket map slot of the IPv4 listener.
pub const SLOT_V4: u32 = 0;
/// Socket map slot of the IPv6 listener.
pub const SLOT_V6: u32 = 1;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const IPPROTO_TCP: i32 = 6;
/// `struct bpf_sk_lookup` field offsets.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
const CTX_LOCAL_IP6: i16 = 44;
/// 127.0.0.1 and the last word of ::1 as the program loads them (network order, read as a
/// little-endian u32).
const LOOPBACK4: i32 = i32::from_le_bytes([127, 0, 0, 1]);
const LOOPBACK6_LAST: i32 = i32::from_le_bytes([0, 0, 0, 1]);
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;
const SK_PASS: i32 = 1;

/// The program, its map and its link: dropping it ends the steering.
pub struct LoopbackSteering {
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
}

impl LoopbackSteering {
    /// Steers loopback TCP connections of the namespace `netns` to `v4` (and `v6`, if given).
    pub fn install(
        netns: BorrowedFd<'_>,
        v4: BorrowedFd<'_>,
        v6: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<Self> {
        let map = bpf::create_sockmap(2)?;
        bpf::sockmap_set(map.as_fd(), SLOT_V4, v4)?;
        if let Some(v6) = v6 {
            bpf::sockmap_set(map.as_fd(), SLOT_V6, v6)?;
        }
        let prog = bpf::load_sk_lookup(&program(map.as_fd()), c"husk_portfwd")?;
        let link = bpf::link_to_netns(prog.as_fd(), netns)?;
        Ok(Self {
            _link: link,
            _prog: prog,
            _map: map,
        })
    }
}

/// A jump target in [`Asm`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Pass,
    V6,
    Lookup,
}

/// Just enough of an assembler to keep jump offsets out of the program text.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<(Label, usize)>,
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }
    fn label(&mut self, l: Label) {
        self.labels.push((l, self.insns.len()));
    }
    fn jump(&mut self, code: u8, dst: u8, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.op(code, dst, 0, 0, imm);
    }
    /// `dst = *(u32 *)(src + off)`
    fn load32(&mut self, dst: u8, src: u8, off: i16) {
        self.op(0x61, dst, src, off, 0);
    }
    /// `dst = src`
    fn mov(&mut self, dst: u8, src: u8) {
        self.op(0xbf, dst, src, 0, 0);
    }
    /// `dst = imm`
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.op(0xb7, dst, 0, 0, imm);
    }
    fn jne(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x55, dst, imm, to);
    }
    fn jeq(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x15, dst, imm, to);
    }
    fn call(&mut self, helper: i32) {
        self.op(0x85, 0, 0, 0, helper);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| l == to)
                .map_or(0, |(_, i)| *i);
            // Programs here are a few dozen instructions long.
            self.insns[*at].off = i16::try_from(target as isize - *at as isize - 1).unwrap_or(0);
        }
        self.insns
    }
}

/// The `sk_lookup` program:
/// ```text
/// if proto != TCP: pass
/// key = 0 if local address is 127.0.0.1; 1 if it is ::1; otherwise pass
/// sk = map[key]; if sk: sk_assign(ctx, sk); sk_release(sk)
/// pass
/// ```
fn program(map: BorrowedFd<'_>) -> Vec<Insn> {
    use std::os::fd::AsRawFd;
    let mut a = Asm::default();
    a.mov(6, 1);
    a.load32(2, 6, CTX_PROTOCOL);
    a.jne(2, IPPROTO_TCP, Label::Pass);
    a.load32(2, 6, CTX_FAMILY);
    a.jeq(2, AF_INET6, Label::V6);
    a.jne(2, AF_INET, Label::Pass);
    a.load32(2, 6, CTX_LOCAL_IP4);
    a.jne(2, LOOPBACK4, Label::Pass);
    a.mov_imm(3, SLOT_V4 as i32);
    a.jump(0x05, 0, 0, Label::Lookup);
    a.label(Label::V6);
    for word in 0..3 {
        a.load32(2, 6, CTX_LOCAL_IP6 + 4 * word);
        a.jne(2, 0, Label::Pass);
    }
    a.load32(2, 6, CTX_LOCAL_IP6 + 12);
    a.jne(2, LOOPBACK6_LAST, Label::Pass);
    a.mov_imm(3, SLOT_V6 as i32);
    a.label(Label::Lookup);
    // *(u32 *)(r10 - 4) = r3; r2 = r10 - 4
    a.op(0x63, 10, 3, -4, 0);
    a.mov(2, 10);
    a.op(0x07, 2, 0, 0, -4);
    // r1 = the map (a 64-bit immediate: two slots, BPF_PSEUDO_MAP_FD)
    a.op(0x18, 1, 1, 0, map.as_raw_fd());
    a.op(0, 0, 0, 0, 0);
    a.call(HELPER_MAP_LOOKUP_ELEM);
    a.jeq(0, 0, Label::Pass);
    a.mov(7, 0);
    a.mov(1, 6);
    a.mov(2, 7);
    a.mov_imm(3, 0);
    a.call(HELPER_SK_ASSIGN);
    a.mov(1, 7);
    a.call(HELPER_SK_RELEASE);
    a.label(Label::Pass);
    a.mov_imm(0, SK_PASS);
    a.op(0x95, 0, 0, 0, 0);
    a.finish()
}
