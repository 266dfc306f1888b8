//! The guest kernel build step.
//!
//! husk's guest kernel is Debian's `linux-source-6.1` configured from `make allnoconfig`
//! plus the fragments in `kernel-config/fragments/*.conf`, built once and cached under
//! `<cache>/kernel/<key>/{bzImage,vmlinux,.config}`, where `<key>` hashes the source
//! package version and the fragments ([`cache_key`]). The build takes ~16 minutes on
//! two cores, so [`KernelBuild::ensure`] never rebuilds when the key matches.
//!
//! Like Kata's kernel build, it fails when a requested `CONFIG_X=v` line did not land
//! verbatim in the final `.config` (a dependency was missing or the symbol was renamed):
//! a silently dropped option otherwise shows up much later as a guest that cannot mount
//! virtio-fs or talk vsock.
//!
//! A second [`Flavour`] shares the machinery: the outer kernel of the nested-KVM test host
//! (the guest fragments, then `kernel-config/outer/`), cached under its own key; the
//! guest's key does not change because the outer flavour exists. The guest flavour's
//! source also gets the patches in `kernel-config/patches/` ([`PatchSet`]).

mod builder;
mod cache;
mod exec;
mod flavour;
mod fragments;
mod key;
mod patches;
mod source;

pub use builder::{BuildError, BuildOutcome, KernelBuild};
pub use cache::{CACHE_DIR_ENV, CacheError, KernelArtifacts, cache_root, kernel_cache_dir};
pub use exec::ExecError;
pub use flavour::Flavour;
pub use fragments::{Fragment, FragmentError, FragmentSet, Request, unmet_requests};
pub use key::{CacheKey, RECIPE_TAG, cache_key};
pub use patches::PatchSet;
pub use source::{KernelSource, SOURCE_PACKAGE, SOURCE_TARBALL, SourceError};
