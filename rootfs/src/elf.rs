//! A minimal ELF check: the initramfs has no dynamic loader and no libc, so `/init`
//! must be a statically linked x86-64 executable. A dynamically linked agent would make
//! the guest kernel panic with the unhelpful "No working init found"; catching it at
//! build time names the real problem.

/// `PT_INTERP`: the program header naming a dynamic loader.
const PT_INTERP: u32 = 3;
/// `ET_EXEC` and `ET_DYN` (static-pie executables are `ET_DYN` without `PT_INTERP`).
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
/// `EM_X86_64`.
const EM_X86_64: u16 = 62;
/// Size of an ELF64 file header.
const EHDR_LEN: usize = 64;

/// Why a binary is not usable as the guest's `/init`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// Not a 64-bit little-endian ELF file at all.
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    /// ELF, but not an executable for x86-64.
    #[error("ELF type {e_type} / machine {e_machine} is not an x86-64 executable")]
    WrongKind {
        /// `e_type`.
        e_type: u16,
        /// `e_machine`.
        e_machine: u16,
    },
    /// Program headers point outside the file.
    #[error("truncated ELF program header table")]
    Truncated,
    /// The binary asks for a dynamic loader.
    #[error(
        "dynamically linked (has an interpreter {interpreter:?}); build it with \
         RUSTFLAGS=\"-C target-feature=+crt-static\" and an explicit --target"
    )]
    Dynamic {
        /// The requested loader, e.g. `/lib64/ld-linux-x86-64.so.2`.
        interpreter: String,
    },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Succeeds if `elf` is an x86-64 executable without a `PT_INTERP` program header.
pub fn ensure_static_elf(elf: &[u8]) -> Result<(), ElfError> {
    if elf.len() < EHDR_LEN || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let e_type = u16_at(elf, 0x10).ok_or(ElfError::NotElf64)?;
    let e_machine = u16_at(elf, 0x12).ok_or(ElfError::NotElf64)?;
    if !matches!(e_type, ET_EXEC | ET_DYN) || e_machine != EM_X86_64 {
        return Err(ElfError::WrongKind { e_type, e_machine });
    }
    let phoff = u64_at(elf, 0x20).ok_or(ElfError::Truncated)?;
    let phentsize = u16_at(elf, 0x36).ok_or(ElfError::Truncated)?;
    let phnum = u16_at(elf, 0x38).ok_or(ElfError::Truncated)?;
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::Truncated)?;
    for i in 0..usize::from(phnum) {
        let ph = phoff
            .checked_add(i * usize::from(phentsize))
            .ok_or(ElfError::Truncated)?;
        let p_type = u32_at(elf, ph).ok_or(ElfError::Truncated)?;
        if p_type == PT_INTERP {
            let off = u64_at(elf, ph.saturating_add(8)).ok_or(ElfError::Truncated)?;
            let size = u64_at(elf, ph.saturating_add(32)).ok_or(ElfError::Truncated)?;
            let interpreter = usize::try_from(off)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, s)| elf.get(o..o.checked_add(s)?))
                .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
                .unwrap_or_default();
            return Err(ElfError::Dynamic { interpreter });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic ELF64 header with `phdrs` program headers of the given types.
    fn elf(e_type: u16, phdr_types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_LEN];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // little endian
        b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&u16::try_from(phdr_types.len()).unwrap().to_le_bytes());
        let interp_off = EHDR_LEN + 56 * phdr_types.len();
        for t in phdr_types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            ph[8..16].copy_from_slice(&(interp_off as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&11u64.to_le_bytes());
            b.extend(ph);
        }
        b.extend(b"/lib/ld.so\0");
        b
    }

    #[test]
    fn static_executables_pass() {
        assert_eq!(ensure_static_elf(&elf(ET_EXEC, &[1, 1])), Ok(()));
        assert_eq!(
            ensure_static_elf(&elf(ET_DYN, &[6, 1])),
            Ok(()),
            "static-pie"
        );
    }

    #[test]
    fn dynamic_executables_name_their_loader() {
        assert_eq!(
            ensure_static_elf(&elf(ET_DYN, &[6, PT_INTERP, 1])),
            Err(ElfError::Dynamic {
                interpreter: "/lib/ld.so".into()
            })
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(ensure_static_elf(b"#!/bin/sh\n"), Err(ElfError::NotElf64));
        assert!(matches!(
            ensure_static_elf(&elf(1, &[])),
            Err(ElfError::WrongKind { .. })
        ));
        let mut truncated = elf(ET_EXEC, &[1]);
        truncated[0x38] = 200;
        assert_eq!(ensure_static_elf(&truncated), Err(ElfError::Truncated));
    }

    #[test]
    fn host_binaries_are_classified() {
        // Debian's /bin/sh (dash) is dynamically linked.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(matches!(
            ensure_static_elf(&sh),
            Err(ElfError::Dynamic { .. })
        ));
    }
}
