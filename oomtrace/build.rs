//! Builds the eBPF programs (oomtrace-ebpf, for bpfel-unknown-none) and leaves
//! the object in OUT_DIR, where src/probes.rs embeds it.
//!
//! This needs a nightly toolchain with rust-src and bpf-linker on PATH;
//! `cargo xtask setup` installs both. Set AYA_BUILD_SKIP=1 to build the
//! collector without the eBPF object (it then cannot trace; for clippy/docs).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&metadata)
        .parent()
        .ok_or_else(|| anyhow!("no parent of {metadata}"))?
        .join("oomtrace-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    if skip {
        // Leave an empty object so that include_bytes! still compiles; the
        // collector refuses to run with it and says why.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("oomtrace-ebpf"), b"").context("writing placeholder object")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "oomtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain with rust-src and bpf-linker",
    )
}
