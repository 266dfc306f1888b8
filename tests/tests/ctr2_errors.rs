//! Bad input under containerd 2.x: husk must refuse an invalid spec within a bound, say
//! what is wrong, and leave nothing behind. Same scenario as in `ctr_errors.rs`.

mod common;

use std::time::Duration;

use anyhow::Result;
use husk_tests::{ContainerdFlavour, Runtime};

#[test]
fn invalid_spec_is_rejected() -> Result<()> {
    common::run_on(
        "ctr2-bad-spec",
        Runtime::Husk,
        ContainerdFlavour::V2,
        |bed| common::invalid_spec_is_rejected(bed, Duration::from_secs(60)),
    )
}
