//! Generates the ttrpc/protobuf code for `proto/agent.proto` and the messages of
//! `proto/runtimeoptions.proto` and `proto/cri_sandbox.proto` into OUT_DIR.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR unset")?).join("agent");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!("cargo:rerun-if-changed=proto/agent.proto");
    println!("cargo:rerun-if-changed=proto/runtimeoptions.proto");
    println!("cargo:rerun-if-changed=proto/cri_sandbox.proto");
    Codegen::new()
        .inputs([
            "proto/agent.proto",
            "proto/runtimeoptions.proto",
            "proto/cri_sandbox.proto",
        ])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .context("generating code from proto/")?;
    strip_inner_attributes(&out)
}

/// `include!` cannot take files with inner attributes (rust-lang/rust#18810); the lib.rs that
/// includes them sets the lint allowances instead.
fn strip_inner_attributes(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n"))?;
        }
    }
    Ok(())
}
