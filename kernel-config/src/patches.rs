//! Source patches: `kernel-config/patches/*.patch`, applied in file-name order with
//! `patch -p1` right after extraction. Each is small, husk-specific and explained in its
//! own header; they are part of the cache key, so changing one rebuilds the kernel.

use std::path::Path;

use crate::fragments::{Fragment, FragmentError, read_files_named};

/// The patches of one kernel recipe, sorted by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchSet {
    patches: Vec<Fragment>,
}

impl PatchSet {
    /// Loads every `*.patch` file of `dir` (none is fine).
    pub fn load(dir: &Path) -> Result<Self, FragmentError> {
        Ok(Self::from_patches(read_files_named(dir, "patch")?))
    }

    /// A set from in-memory patches (sorted here).
    pub fn from_patches(mut patches: Vec<Fragment>) -> Self {
        patches.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Self { patches }
    }

    /// The patches in the order they are applied.
    pub fn patches(&self) -> &[Fragment] {
        &self.patches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_patches_load_in_name_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("patches");
        let set = PatchSet::load(&dir).unwrap();
        let names: Vec<&str> = set.patches().iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"0001-lapic-timer-hz.patch"), "{names:?}");
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }
}
