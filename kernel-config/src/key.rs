//! The kernel cache key.
//!
//! First 16 hex digits of the SHA-256 of:
//! `"husk-kernel-recipe-1\n"`, then `"linux-source-6.1 <version>\n"`, then for each
//! fragment sorted by file name: `<file name>\n<contents verbatim>`. A flavour with a
//! second layer of fragments (the outer kernel, see [`crate::Flavour`]) hashes that layer
//! after the first, its names prefixed (`outer/80-host-9p.conf`), so its key differs from
//! the guest's while the guest's key stays what it always was. Source patches, if the
//! recipe has any, follow as `patch/<file name>\n<contents verbatim>`.
//!
//! This is byte-for-byte what the reference shell computed
//! (`printf 'husk-kernel-recipe-1\nlinux-source-6.1 %s\n' "$VER"; for f in ...; do
//! printf '%s\n' "$(basename $f)"; cat $f; done | sha256sum | cut -c1-16`), so kernels
//! built by either are shared. Change [`RECIPE_TAG`] whenever the build *procedure*
//! changes in a way that alters the output.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::fragments::FragmentSet;
use crate::patches::PatchSet;
use crate::source::SOURCE_PACKAGE;

/// Versions the build recipe itself.
pub const RECIPE_TAG: &str = "husk-kernel-recipe-1";
/// Hex digits of the digest kept in the key.
const KEY_HEX_LEN: usize = 16;

/// A kernel cache key: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key as a directory name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Computes the cache key of a kernel built from `linux-source-6.1` at
/// `source_version` (the Debian package version) with `fragments` and `patches`.
pub fn cache_key(source_version: &str, fragments: &FragmentSet, patches: &PatchSet) -> CacheKey {
    let mut h = Sha256::new();
    h.update(RECIPE_TAG.as_bytes());
    h.update(b"\n");
    h.update(format!("{SOURCE_PACKAGE} {source_version}\n").as_bytes());
    for f in fragments.fragments() {
        h.update(f.name.as_bytes());
        h.update(b"\n");
        h.update(&f.contents);
    }
    for p in patches.patches() {
        h.update(format!("patch/{}\n", p.name).as_bytes());
        h.update(&p.contents);
    }
    let mut hex = hex::encode(h.finalize());
    hex.truncate(KEY_HEX_LEN);
    CacheKey(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragments::Fragment;

    #[test]
    fn matches_the_reference_shell() {
        // Expected value computed with the reference shell pipeline on these files:
        //   a.conf = '# c\nCONFIG_B="x y"\n', b.conf = 'CONFIG_A=y\n', version 6.1.192-3.
        let set = FragmentSet::from_fragments(vec![
            Fragment {
                name: "b.conf".into(),
                contents: b"CONFIG_A=y\n".to_vec(),
            },
            Fragment {
                name: "a.conf".into(),
                contents: b"# c\nCONFIG_B=\"x y\"\n".to_vec(),
            },
        ]);
        assert_eq!(
            cache_key("6.1.192-3", &set, &PatchSet::default()).as_str(),
            "d94c266dc6ecebe6"
        );
    }

    #[test]
    fn depends_on_version_names_and_contents() {
        let set = |name: &str, c: &str| {
            FragmentSet::from_fragments(vec![Fragment {
                name: name.into(),
                contents: c.into(),
            }])
        };
        let none = PatchSet::default();
        let base = cache_key("1", &set("a.conf", "X\n"), &none);
        assert_eq!(base.as_str().len(), 16);
        assert_ne!(base, cache_key("2", &set("a.conf", "X\n"), &none));
        assert_ne!(base, cache_key("1", &set("b.conf", "X\n"), &none));
        assert_ne!(base, cache_key("1", &set("a.conf", "Y\n"), &none));
        assert_eq!(base, cache_key("1", &set("a.conf", "X\n"), &none));
        let patch = |c: &str| {
            PatchSet::from_patches(vec![Fragment {
                name: "0001-x.patch".into(),
                contents: c.into(),
            }])
        };
        let patched = cache_key("1", &set("a.conf", "X\n"), &patch("--- a\n"));
        assert_ne!(base, patched);
        assert_ne!(
            patched,
            cache_key("1", &set("a.conf", "X\n"), &patch("--- b\n"))
        );
    }
}
